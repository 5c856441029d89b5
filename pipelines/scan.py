"""Recipe: scan a store (every object, every version) for any trace of a subject; exit 1 if found.

expunge scan --storage ./expunge-demo/store --subject user-45
expunge scan --storage ./expunge-demo/store --subject user-45 --logs /tmp/ray/session_latest/logs --logs ./service-logs
python -m expunge.pipelines.scan ...   (the same, as ``ray job submit`` runs it)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from expunge.orchestrator.catalog import Catalog, EnsembleManifest, RegistryBinding
from expunge.orchestrator.config import PrivacyConfig, StorageConfig
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.evidence.scan import Finding, ScanReport, scan_store
from expunge.orchestrator.evidence.scan_outside import scan_logs, scan_registry_text
from expunge.orchestrator.registry.binding import bind_tracking
from expunge.orchestrator.registry.checks import AuditView
from expunge.orchestrator.session import published
from expunge.pipelines._runtime import exit_on_error, hasher_from_env, init_logging, job_and_store

__all__ = ["main", "run"]

log = logging.getLogger(__name__)


def run(
    storage: StorageConfig,
    subject: str,
    privacy: PrivacyConfig = PrivacyConfig(),
    tracking_uri: str | None = None,
    registry: bool = True,
    hasher: SubjectHasher | None = None,
    logs: Sequence[Path] = (),
) -> ScanReport:
    """Scan the store, the log folders ``logs`` and, where it records one (or ``tracking_uri`` names it), its MLflow registry.

    The registry part: the params and tags of the store's runs and model versions (bounded
    token rule), and no model version built while the subject was in the data may load or
    keep files.

    Raises:
        ConfigError: no key, a key the store was not trained with, no published store, a log
            folder that does not exist, or a tracking URI other than the one the store records.
        InvalidSubjectIdError: the subject id is refused by the identity rule.
        TrackingUnreachable: the registry does not answer.
    """
    hasher = hasher or hasher_from_env(privacy)
    catalog, latest = published(storage, hasher)
    store = catalog.store
    digest = hasher.digest(subject)
    report = scan_store(store, subject, digest)
    if logs:
        try:
            found, files, lines = scan_logs(logs, subject)
        except FileNotFoundError as exc:
            raise ConfigError(f"{exc}: pass an existing folder to --logs") from exc
        report = report.merged(found, log_files=files, log_lines=lines)
    if not registry or (latest.registry is None and tracking_uri is None):
        return report
    tracking = bind_tracking(latest.registry, None, tracking_uri, store.uri)
    binding = RegistryBinding(
        tracking_uri=tracking.uri or "",
        experiment=tracking.experiment,
        model_name=tracking.model_name,
        alias=tracking.alias,
    )
    view = AuditView(binding, storage)
    found, runs, versions = scan_registry_text(view, subject)
    report = report.merged(found, mlflow_runs=runs, mlflow_model_versions=versions)
    erased_at = _first_version_without(catalog, latest, digest)
    if erased_at is None:
        return report  # never in this store: no registry version can hold them
    check = view.check_erasure(erased_at)
    extra = [
        Finding(
            key=f"models:/{check.model_name}/{version.version}",
            version_id=None,
            kind="registry-version",
            rule="registry-check",
            detail=f"built from ensemble v{version.ensemble_version}, which held the subject: "
            + ", ".join(
                what
                for what, present in (
                    ("loads", version.loadable),
                    (f"{version.remaining_objects} stored file(s) left", version.remaining_objects > 0),
                    (f"alias {', '.join(version.aliases)}", bool(version.aliases)),
                    ("LoggedModel record kept", version.logged_model_record),
                )
                if present
            ),
        )
        for version in check.versions
        if not version.clean
    ]
    extra += [
        Finding(
            key=f"logged-model:{m}",
            version_id=None,
            kind="registry-version",
            detail="built before the erasure",
            rule="registry-check",
        )
        for m in check.orphan_models
    ]
    return report.merged(tuple(extra))


def _first_version_without(catalog: Catalog, latest: EnsembleManifest, digest: str) -> int | None:
    """The first ensemble version that no longer holds ``digest`` (every earlier one did); None if none ever did.

    A subject still placed in the published version makes it ``latest.version + 1``: every
    registered version holds them. An erased subject's tombstone names the request that erased
    them, and that request's manifest is the first version without them.
    """
    if digest in catalog.read_placement(latest.placement_key).entries:
        return latest.version + 1
    erasures = [e for e in catalog.tombstone_log() if e.action == "erased" and digest in e.subject_digests]
    if not erasures:
        return None
    request_ids = {e.request_id for e in erasures}
    versions = [v for v in catalog.versions() if catalog.read(v).request_id in request_ids]
    return min(versions) if versions else None


def main(
    storage: str | None = typer.Option(
        None, help="storage URI to scan (local folder, file:// or s3://; overrides the config)"
    ),
    config: Path | None = typer.Option(None, help="job config YAML (for storage and privacy)"),
    subject: list[str] = typer.Option(
        ..., help="subject id to look for (digested with EXPUNGE_SUBJECT_KEY); one per scan"
    ),
    endpoint_url: str | None = typer.Option(None, help="S3 endpoint (default: AWS_ENDPOINT_URL_S3)"),
    tracking_uri: str | None = typer.Option(
        None, help="MLflow registry to check too (default: the one the store records; another one is refused)"
    ),
    registry: bool = typer.Option(True, "--registry/--no-registry", help="also check the store's MLflow registry"),
    logs: list[Path] = typer.Option(
        [], "--logs", help="a log folder (or file) to search too, line by line; repeatable (Ray's, the service's)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Read every object version of a store, its MLflow registry and any --logs folders for any trace of a subject.

    Subject columns are compared by typed value under the identity rule (and by keyed digest);
    JSON documents field by field, text and log lines, and MLflow params and tags by the
    bounded token rule (docs/verification.md, "Storage"). The registry part also checks that no
    model version built while the subject was in the data may load or keep a stored file
    (every object version on S3) or a LoggedModel record. Findings say where (object and
    version, column / JSON path / line / param or tag) and which rule matched, never the id.

    Exit 0 when nothing of the subject remains, 1 when something does, 2 on errors (including a
    store that does not exist or has no published version: never reported as clean).
    """
    init_logging()
    with exit_on_error():
        if len(subject) > 1:  # one report per subject: a second --subject silently replaced the first
            raise ConfigError(
                f"--subject was given {len(subject)} times: a scan looks for one subject, so run it once per "
                "subject (each exits 0 only when nothing of that subject remains)"
            )
        job, store = job_and_store(config, storage)
        if endpoint_url:
            store = store.model_copy(update={"endpoint_url": endpoint_url})
        report = run(store, subject[0], job.privacy if job else PrivacyConfig(), tracking_uri, registry, logs=logs)
    if as_json:
        typer.echo(report.model_dump_json(indent=1))
    else:
        console = Console()
        if report.clean:
            console.print(f"clean: nothing of the subject remains in {report.coverage.describe()}")
        else:
            table = Table(title=f"{len(report.findings)} trace(s) of subject {report.subject_digest[:12]}...")
            for column in ("object", "version", "where", "kind", "rule", "detail"):
                table.add_column(column, overflow="fold")  # whole keys, wrapped, never cut
            for f in report.findings:
                table.add_row(f.key, f.version_id or "-", f.location or "-", f.kind, f.rule, f.detail)
            console.print(table)
            console.print(f"searched: {report.coverage.describe()}")
    raise typer.Exit(0 if report.clean else 1)


if __name__ == "__main__":
    typer.run(main)
