"""Recipe: verify one erasure (re-derivation, storage, registry, membership audit, receipt log), or the receipt log.

expunge verify --workdir expunge-demo --request req-1a2b3c4d5e6f [--subject user-45]
expunge verify --storage s3://bucket/expunge --request GDPR-2026-0042
expunge verify --storage ./expunge-store --log
python -m expunge.pipelines.verify ...   (the same, as ``ray job submit`` runs it)

Exit 0 when every check passed (skipped checks say why), 1 when any failed, 2 on bad input.
Writes ``verify-<request>.md`` / ``.json`` (or ``receipt-log.md`` / ``.json``) to ``--out`` and
attaches the request's report to its MLflow run(s).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import typer

from expunge.orchestrator.catalog import Catalog, RegistryBinding
from expunge.orchestrator.config import PrivacyConfig, StorageConfig, TrackingConfig, load_job_config
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.evidence.receipt_chain import ChainReport
from expunge.orchestrator.evidence.report import VerifyReport, chain_markdown
from expunge.orchestrator.evidence.verify import verify_erasure, verify_log
from expunge.pipelines._runtime import exit_on_error, hasher_from_env, init_logging, key_configured, progress
from expunge.shards.store import ObjectStore

__all__ = ["VerifyOptions", "main", "run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyOptions:
    """What to verify and where, resolved from the flags once before anything is read.

    ``hasher`` is None for a log walk alone (it needs no key); ``registry`` None skips MLflow;
    ``record`` attaches the report to the request's MLflow runs.
    """

    storage: StorageConfig
    hasher: SubjectHasher | None
    registry: RegistryBinding | None
    out: Path
    record: bool


def _hasher(privacy: PrivacyConfig, workdir: Path | None) -> SubjectHasher:
    """The configured key if set (as the demo does), else the demo's key file in ``workdir``."""
    if key_configured(privacy) or workdir is None:
        return hasher_from_env(privacy)
    key_file = workdir / "subject.key"
    if not key_file.is_file():
        raise ConfigError(
            f"{key_file} does not exist and {privacy.subject_key_env} is not set: --workdir names the folder of "
            "`expunge demo`, which keeps its generated key there"
        )
    return SubjectHasher(key_file.read_text().strip().encode())


def _registry(
    storage: StorageConfig, tracking: TrackingConfig | None, tracking_uri: str | None
) -> RegistryBinding | None:
    """The registry the store records, with ``--tracking-uri`` (or the config's tracking) applied."""
    latest = Catalog(ObjectStore(storage)).latest()
    recorded = latest.registry if latest is not None else None
    if recorded is not None:
        return recorded.model_copy(update={"tracking_uri": tracking_uri}) if tracking_uri else recorded
    if tracking_uri is None and (tracking is None or not tracking.uri):
        return None
    base = tracking or TrackingConfig()
    return RegistryBinding(
        tracking_uri=tracking_uri or base.uri or "",
        experiment=base.experiment,
        model_name=base.model_name,
        alias=base.alias,
    )


def run(
    options: VerifyOptions, request_id: str | None, subject: str | None, walk_log: bool
) -> tuple[VerifyReport | None, ChainReport | None]:
    """Verify the request and/or walk the log, write the reports under ``options.out``; returns both."""
    report = chain = None
    options.out.mkdir(parents=True, exist_ok=True)
    if request_id is not None:
        if options.hasher is None:
            raise ConfigError("verifying a request needs the digest key: set EXPUNGE_SUBJECT_KEY or pass --workdir")
        with progress(f"verifying request {request_id} (re-deriving the affected shards, scanning the store)"):
            report = verify_erasure(
                options.storage, request_id, options.hasher, subject, options.registry, log_to_mlflow=options.record
            )
        (options.out / f"verify-{request_id}.md").write_text(report.to_markdown())
        (options.out / f"verify-{request_id}.json").write_text(report.model_dump_json(indent=1))
    if walk_log:
        with progress("walking the receipt log"):
            chain = verify_log(options.storage, options.registry)
        (options.out / "receipt-log.md").write_text(chain_markdown(chain))
        (options.out / "receipt-log.json").write_text(chain.model_dump_json(indent=1))
    return report, chain


def main(
    request: str | None = typer.Option(None, "--request", help="request id of the erasure to verify"),
    walk_log: bool = typer.Option(False, "--log", help="walk the store's receipt log and name the first broken link"),
    subject: str | None = typer.Option(
        None, help="raw id of a subject of the request: the storage scan also looks for it (default: digests only)"
    ),
    workdir: Path | None = typer.Option(
        None, help="the folder of `expunge demo`: its key, WORKDIR/store and WORKDIR/mlflow.db"
    ),
    storage: str | None = typer.Option(None, help="storage URI (default: WORKDIR/store, or the config's)"),
    tracking_uri: str | None = typer.Option(
        None, help="MLflow tracking URI (default: the one the store recorded at training)"
    ),
    config: Path | None = typer.Option(None, help="job config YAML (for storage, tracking, privacy)"),
    out: Path | None = typer.Option(None, help="folder for the report files (default: WORKDIR, else .)"),
    record: bool = typer.Option(True, help="attach the report to the request's MLflow run(s)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON instead of Markdown"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Check an erasure: re-derive the affected shards bit for bit, scan the store and the registry, report the
    membership audit and the receipt log. Or, with --log, walk the receipt log.

    Exit 0 when every check passed, 1 when any failed, 2 on bad input (no such request, wrong key, no store).
    """
    init_logging(verbose)
    with exit_on_error():
        if request is None and not walk_log:
            raise ConfigError("say what to verify: --request ID (one erasure) and/or --log (the receipt log)")
        job = load_job_config(config) if config else None
        uri = storage or (str(workdir / "store") if workdir is not None else None) or (job.storage.uri if job else None)
        if uri is None:
            raise ConfigError("pass --storage URI, --workdir DIR (the demo's folder) or --config FILE.yaml")
        store = (job.storage if job else StorageConfig(uri=uri)).model_copy(update={"uri": uri})
        privacy = job.privacy if job else PrivacyConfig()
        options = VerifyOptions(
            storage=store,
            hasher=_hasher(privacy, workdir) if request is not None else None,
            registry=_registry(store, job.tracking if job else None, tracking_uri),
            out=out or workdir or Path("."),
            record=record,
        )
        report, chain = run(options, request, subject, walk_log)
    if as_json:
        found = {"request": report, "log": chain}
        payload = {k: v.model_dump(mode="json") for k, v in found.items() if v is not None}
        typer.echo(json.dumps(payload if len(payload) > 1 else next(iter(payload.values())), indent=1))
    else:
        if report is not None:
            typer.echo(report.to_markdown())
        if chain is not None:
            typer.echo(chain_markdown(chain))
    failed = (report is not None and not report.passed) or (chain is not None and not chain.intact)
    raise typer.Exit(1 if failed else 0)


if __name__ == "__main__":
    typer.run(main)
