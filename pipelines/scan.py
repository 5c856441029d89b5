"""Recipe: scan a store (every object, every version) for any trace of a subject; exit 1 if found.

expunge scan --storage ./expunge-demo/store --subject user-45
python -m pipelines.scan ...   (the same, as ``ray job submit`` runs it)
"""

from __future__ import annotations

import logging

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.catalog import Catalog
from orchestrator.config import PrivacyConfig, StorageConfig
from orchestrator.coordinator import check_key
from orchestrator.errors import ConfigError
from orchestrator.scan import ScanReport, scan_store
from pipelines._runtime import exit_on_error, hasher_from_env, init_logging
from shards.store import ObjectStore

__all__ = ["main", "run"]

log = logging.getLogger(__name__)


def run(storage: StorageConfig, subject: str, privacy: PrivacyConfig = PrivacyConfig()) -> ScanReport:
    hasher = hasher_from_env(privacy)
    store = ObjectStore(storage)
    latest = Catalog(store).latest()
    if latest is None:
        # "Clean" would be a lie about a store that is not there (a typo in the URI, say).
        raise ConfigError(
            f"no published ensemble in {store.uri}: the store does not exist or was never trained. "
            "Check --storage (a local folder, file:// or s3:// URI of a trained store)."
        )
    check_key(latest, hasher)  # a wrong key would silently miss every digest-keyed trace
    return scan_store(store, subject, hasher.digest(subject))


def main(
    storage: str = typer.Option(..., help="storage URI to scan (local folder, file:// or s3://)"),
    subject: str = typer.Option(..., help="subject id to look for (digested with EXPUNGE_SUBJECT_KEY)"),
    endpoint_url: str | None = typer.Option(None, help="S3 endpoint (default: AWS_ENDPOINT_URL_S3)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Read every object version of a store for any trace of a subject (raw id or digest).

    Exit 0 when nothing of the subject remains, 1 when something does, 2 on errors (including a
    store that does not exist or has no published version: never reported as clean).
    """
    init_logging()
    with exit_on_error():
        report = run(StorageConfig(uri=storage, endpoint_url=endpoint_url), subject)
    if as_json:
        typer.echo(report.model_dump_json(indent=1))
    else:
        console = Console()
        if report.clean:
            console.print(f"clean: {report.objects_scanned} object version(s) scanned, nothing of the subject remains")
        else:
            table = Table(title=f"{len(report.findings)} trace(s) of subject {report.subject_digest[:12]}...")
            for column in ("object", "version", "kind", "detail"):
                table.add_column(column, overflow="fold")  # whole keys, wrapped, never cut
            for f in report.findings:
                table.add_row(f.key, f.version_id or "-", f.kind, f.detail)
            console.print(table)
    raise typer.Exit(0 if report.clean else 1)


if __name__ == "__main__":
    typer.run(main)
