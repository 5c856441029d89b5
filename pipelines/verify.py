"""Recipe: verify one erasure (re-derivation, storage, registry, membership audit, receipt log), one ingest, or the log.

expunge verify --workdir expunge-demo --request req-1a2b3c4d5e6f [--subject user-45]
expunge verify --storage s3://bucket/expunge --request GDPR-2026-0042
expunge verify --storage ./expunge-store --log
expunge verify --config job.yaml --request daily-2026-12-04   (an ingest: receipt, shard versions, re-derivation)
expunge verify --config job.yaml --request req-1a2b3c4d5e6f --audit --report ./certificate
python -m expunge.pipelines.verify ...   (the same, as ``ray job submit`` runs it)

Exit 0 when every check passed (skipped checks say why), 1 when any failed, 2 on bad input.
Writes ``verify-<request>.md`` / ``.json`` (or ``receipt-log.md`` / ``.json``) to ``--out`` and
attaches the request's report to its MLflow run(s). ``--report DIR`` also writes the certificate
for the privacy team (``DIR/report.html``, self-contained, and ``DIR/report.json``). ``--audit``
shows the membership audit of a request audited at erasure time, and, for one that was not, runs
the post-hoc check on held-out rows (``evidence.audit_holdout`` or ``--audit-holdout``), which is
labelled as such: the erased rows are gone, so no membership audit can be run afterwards.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import typer

from expunge.orchestrator.catalog import Catalog, RegistryBinding
from expunge.orchestrator.config import (
    EvidenceConfig,
    PrivacyConfig,
    StorageConfig,
    TrackingConfig,
    load_job_config,
)
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.evidence.audit_check import NOT_AUDITED, holdout_check
from expunge.orchestrator.evidence.certificate import AnchorRun, render_certificate
from expunge.orchestrator.evidence.certificate_facts import certificate_facts
from expunge.orchestrator.evidence.holdout import holdout_rows
from expunge.orchestrator.evidence.ingest_verify import IngestVerifyReport, verify_ingest
from expunge.orchestrator.evidence.receipt_chain import ChainReport
from expunge.orchestrator.evidence.references import ingest_named
from expunge.orchestrator.evidence.report import VerifyReport, chain_markdown
from expunge.orchestrator.evidence.verify import verify_erasure, verify_log
from expunge.orchestrator.registry.checks import AuditView
from expunge.orchestrator.registry.ownership import bind_writer
from expunge.orchestrator.session import published
from expunge.pipelines._runtime import exit_on_error, hasher_from_env, init_logging, key_configured, progress
from expunge.shards.store import ObjectStore

__all__ = ["VerifyOptions", "main", "run", "write_certificate"]

log = logging.getLogger(__name__)

#: The MLflow tag in which each request run anchors its chained receipt's sha256 (``evidence.anchors``).
_ANCHOR_TAG = "expunge.chain.receipt_sha256"


@dataclass(frozen=True)
class VerifyOptions:
    """What to verify and where, resolved from the flags once before anything is read.

    ``hasher`` is None for a log walk alone (it needs no key); ``registry`` None skips MLflow;
    ``record`` attaches the report to the request's MLflow runs. ``audit``: run the post-hoc
    check for a request not audited at erasure time, on ``audit_holdout`` (a path; None: say what
    is missing). ``report_dir``: where the certificate goes (None: none is written).
    ``evidence``: the job's evidence settings (where the receipt log is anchored).
    """

    storage: StorageConfig
    hasher: SubjectHasher | None
    registry: RegistryBinding | None
    out: Path
    record: bool
    audit: bool = False
    audit_holdout: str | None = None
    report_dir: Path | None = None
    evidence: EvidenceConfig | None = None
    #: Why MLflow is not checked although the store records a registry (``_copy_untracked``).
    registry_skipped: str | None = None


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
    """The registry the store records, with ``--tracking-uri`` (or the config's tracking) applied; None
    for a copy of a store run with tracking off (``_copy_untracked``)."""
    latest = Catalog(ObjectStore(storage)).latest()
    recorded = latest.registry if latest is not None else None
    if _copy_untracked(storage, tracking, tracking_uri) is not None:
        return None
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


def _copy_untracked(storage: StorageConfig, tracking: TrackingConfig | None, tracking_uri: str | None) -> str | None:
    """Why MLflow is not checked: a copy of a store run with tracking off (its recorded registry serves the
    original, which its erasures never reached; ``bind_writer``); None otherwise."""
    latest = Catalog(ObjectStore(storage)).latest()
    recorded = latest.registry if latest is not None else None
    if recorded is None or tracking is None or tracking.enabled or tracking_uri is not None:
        return None
    try:
        bind_writer(recorded, tracking, None, storage, probe=False)  # a reader: writes no probe
    except ConfigError:
        return None  # the store that registry serves: checked as ever
    return (
        f"Not checked: this store is a copy run with tracking off, and the registry it records "
        f"({recorded.tracking_uri}, model {recorded.model_name!r}) serves the store it was copied from."
    )


def run(
    options: VerifyOptions, request_id: str | None, subject: str | None, walk_log: bool
) -> tuple[VerifyReport | IngestVerifyReport | None, ChainReport | None]:
    """Verify the request and/or walk the log, write the reports under ``options.out``; returns both.

    A request id of an ingest (``evidence.references.ingest_named``) is verified as an ingest
    (``evidence.ingest_verify``): its receipt, its shard versions, its retrained shards re-derived.
    """
    report: VerifyReport | IngestVerifyReport | None = None
    chain: ChainReport | None = None
    for folder, flag in ((options.out, "--out"), (options.report_dir, "--report")):
        if folder is not None and folder.exists() and not folder.is_dir():
            raise ConfigError(f"{flag} {str(folder)!r} is a file: name a folder (it is created if missing)")
    hasher = options.hasher
    if request_id is not None and hasher is None:
        raise ConfigError("verifying a request needs the digest key: set EXPUNGE_SUBJECT_KEY or pass --workdir")
    ingest = _ingest_named(options, request_id, subject) if request_id is not None else None
    if ingest is not None and hasher is not None:
        with progress("verifying the ingest (its receipt and shard versions; re-deriving the shards it retrained)"):
            report = verify_ingest(options.storage, ingest, hasher)
        _write(options.out, f"verify-{report.request_id}", report.to_markdown(), report.model_dump_json(indent=1))
    elif request_id is not None and hasher is not None:
        with progress("verifying the request (re-deriving the affected shards, scanning the store)"):
            report = verify_erasure(
                options.storage,
                request_id,
                hasher,
                subject,
                options.registry,
                log_to_mlflow=options.record and not options.audit,  # recorded below, with the post-hoc check
                evidence=options.evidence,
                registry_skipped=options.registry_skipped,
            )
        if options.audit:
            report = _post_hoc(report, options)
            if options.record and options.registry is not None:
                runs = AuditView(options.registry, options.storage).log_verification(
                    report.batch_id or report.request_id,
                    report.model_dump(mode="json"),
                    report.to_markdown(),
                    report.passed,
                )
                report = report.model_copy(update={"mlflow_runs": tuple(runs)})
        # Named by the resolved request id: the reference may be a ticket with "/" or an idempotency key.
        _write(options.out, f"verify-{report.request_id}", report.to_markdown(), report.model_dump_json(indent=1))
        if options.report_dir is not None:
            write_certificate(options.storage, report, options.report_dir, options.registry)
    if walk_log:
        with progress("walking the receipt log"):
            chain = verify_log(options.storage, options.registry, options.evidence)
        _write(options.out, "receipt-log", chain_markdown(chain), chain.model_dump_json(indent=1))
    return report, chain


def _write(out: Path, name: str, markdown: str, data: str) -> None:
    """``out/name.md`` and ``out/name.json`` (``out`` created only now: a refused request creates nothing)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(markdown)
    (out / f"{name}.json").write_text(data)


def _ingest_named(options: VerifyOptions, request_id: str, subject: str | None) -> str | None:
    """The ingest ``request_id`` names (None: an erasure, or nothing); erasure-only flags are refused for one.

    Raises:
        ConfigError: no store, a wrong key, or ``--subject``, ``--audit`` or ``--report`` with an ingest.
    """
    assert options.hasher is not None
    catalog, _ = published(options.storage, options.hasher)
    ingest = ingest_named(catalog, options.hasher, request_id)
    if ingest is not None and (options.audit or options.report_dir is not None or subject is not None):
        raise ConfigError(
            f"request {ingest} is an ingest: --subject, --audit and --report apply to erasures; leave them out to "
            "verify it"
        )
    return ingest


def _post_hoc(report: VerifyReport, options: VerifyOptions) -> VerifyReport:
    """The report with its skipped audit row replaced by the post-hoc check (or by what it needs).

    Only a request that erased something and has no audit record gets it; an audited request's
    row is the audit itself. Without held-out rows the row stays ``skipped`` and says how to run it.
    """
    row = report.check("membership_audit")
    if report.receipt_status != "erased" or report.audit is not None or row.status != "skipped":
        return report
    if options.audit_holdout is None:
        found = row.model_copy(
            update={
                "summary": NOT_AUDITED + " No held-out rows were given for it: set evidence.audit_holdout in --config "
                "or pass --audit-holdout PATH."
            }
        )
    else:
        rows = holdout_rows(options.audit_holdout)
        assert options.hasher is not None  # run() refuses a request without the key
        catalog, latest = published(options.storage, options.hasher)
        with progress(f"post-hoc check: scoring {len(rows)} held-out row(s) under the live and re-derived models"):
            found = holdout_check(catalog, catalog.read(latest.version), report.affected_shards, rows, options.hasher)
    checks = tuple(found if c.name == "membership_audit" else c for c in report.checks)
    status = "failed" if any(c.status == "failed" for c in checks) else "passed"
    return report.model_copy(update={"checks": checks, "status": status})


def write_certificate(
    storage: StorageConfig, report: VerifyReport, folder: Path, registry: RegistryBinding | None = None
) -> Path:
    """Write the certificate (``report.html``) and its data (``report.json``) into ``folder``; returns the page.

    ``report.json`` holds ``{"verify_report": ..., "facts": ...}`` (timeline and chain anchor).
    ``registry``: where the request's MLflow runs (and their receipt-log anchor tags) are read.
    """
    facts = certificate_facts(ObjectStore(storage), report)
    if registry is not None:
        runs = AuditView(registry, storage).request_runs(report.batch_id or report.request_id)
        anchors = tuple(AnchorRun(run_id=str(r.info.run_id), receipt_sha256=r.data.tags.get(_ANCHOR_TAG)) for r in runs)
        facts = facts.model_copy(update={"anchor_runs": anchors})
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / "report.html"
    page.write_text(render_certificate(report, facts), encoding="utf-8")
    payload = {"verify_report": report.model_dump(mode="json"), "facts": facts.model_dump(mode="json")}
    (folder / "report.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    log.info("certificate of request %s written to %s", report.request_id, page)
    return page


def main(
    request: str | None = typer.Option(
        None,
        "--request",
        help="the erasure to verify (its request id, idempotency key or ticket), or an ingest (its request id)",
    ),
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
    audit: bool = typer.Option(
        False,
        "--audit",
        help="show the membership audit; for a request not audited at erasure time, run the post-hoc check on "
        "held-out rows instead (labelled as such: not a membership audit)",
    ),
    audit_holdout: Path | None = typer.Option(
        None, help="held-out rows for --audit (Parquet file or folder, or MovieLens file; default: the config's)"
    ),
    report_dir: Path | None = typer.Option(
        None, "--report", help="folder for the certificate: report.html (self-contained, prints to PDF) and report.json"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON instead of Markdown"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Check an erasure: re-derive the affected shards bit for bit, scan the store and the registry, report the
    membership audit and the receipt log. Or an ingest: its stored receipt, the shard versions it made, its retrained
    shards re-derived bit for bit. Or, with --log, walk the receipt log.

    Exit 0 when every check passed, 1 when any failed, 2 on bad input (no such request, wrong key, no store).
    """
    init_logging(verbose)
    with exit_on_error():
        if request is None and not walk_log:
            raise ConfigError("say what to verify: --request ID (one erasure) and/or --log (the receipt log)")
        if request is None and (audit or report_dir is not None):
            raise ConfigError("--audit and --report apply to one erasure: pass --request ID")
        job = load_job_config(config) if config else None
        uri = storage or (str(workdir / "store") if workdir is not None else None) or (job.storage.uri if job else None)
        if uri is None:
            raise ConfigError("pass --storage URI, --workdir DIR (the demo's folder) or --config FILE.yaml")
        store = (job.storage if job else StorageConfig(uri=uri)).model_copy(update={"uri": uri})
        published(store)  # no store: said first (before the key, which a new user might then make anew)
        privacy = job.privacy if job else PrivacyConfig()
        options = VerifyOptions(
            storage=store,
            hasher=_hasher(privacy, workdir) if request is not None else None,
            registry=_registry(store, job.tracking if job else None, tracking_uri),
            registry_skipped=_copy_untracked(store, job.tracking if job else None, tracking_uri),
            out=out or workdir or Path("."),
            record=record,
            audit=audit,
            audit_holdout=str(audit_holdout) if audit_holdout else (job.evidence.audit_holdout if job else None),
            report_dir=report_dir,
            evidence=job.evidence if job else None,
        )
        report, chain = run(options, request, subject, walk_log)
    written = ([f"verify-{report.request_id}"] if report is not None else []) + (["receipt-log"] if chain else [])
    for name in written:
        typer.echo(f"report written to {options.out / name}.md (and .json)", err=True)
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
