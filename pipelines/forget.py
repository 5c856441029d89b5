"""Recipe: erase data subjects from a trained store and print the erasure receipt.

    expunge forget --storage ./expunge-store --subject 42 --subject 77
    expunge forget --config job.yaml --subjects-file tickets.txt
    python -m pipelines.forget ...   (the same, as ``ray job submit`` runs it)

Exit 0 when every named subject was found and erased, 3 when any had no data (the receipt is
printed and stored all the same), 2 on bad input, 4 when another writer won a race.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from orchestrator.config import PrivacyConfig, StorageConfig, TrackingConfig, load_job_config
from orchestrator.coordinator import Coordinator
from orchestrator.errors import ConfigError
from orchestrator.receipts import ErasureReceipt
from pipelines._runtime import exit_on_error, hasher_from_env, init_logging, init_ray, make_lineage, progress

__all__ = ["EXIT_NOT_FOUND", "main", "read_subjects", "run"]

#: Exit status when at least one named subject had no data (README "Exit codes").
EXIT_NOT_FOUND = 3

log = logging.getLogger(__name__)


def read_subjects(subjects: list[str], subjects_file: Path | None) -> list[str]:
    """Subjects from flags and/or a file with one id per line (blank lines and # comments skipped)."""
    found = list(subjects)
    if subjects_file is not None:
        if not subjects_file.is_file():
            raise ConfigError(f"subjects file {str(subjects_file)!r} does not exist")
        for line in subjects_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                found.append(line)
    if not found:
        raise ConfigError("name at least one subject with --subject ID or --subjects-file FILE")
    return found


def run(
    storage: StorageConfig,
    subjects: list[str],
    tracking: TrackingConfig,
    privacy: PrivacyConfig,
    request_id: str | None = None,
) -> ErasureReceipt:
    hasher = hasher_from_env(privacy)  # fail on a missing key before starting anything
    with progress("starting Ray"):
        init_ray()
    coordinator = Coordinator(storage, hasher, make_lineage(tracking, storage))
    try:
        with progress(f"erasing {len(subjects)} subject(s)"):
            return coordinator.forget(subjects, request_id)
    finally:
        coordinator.close()


def main(
    subject: list[str] = typer.Option([], "--subject", help="subject id to erase (repeatable)"),
    subjects_file: Path | None = typer.Option(None, help="file with one subject id per line"),
    config: Path | None = typer.Option(None, help="job config YAML (for storage, tracking, privacy)"),
    storage: str | None = typer.Option(None, help="storage URI (overrides the config)"),
    tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI (overrides the config)"),
    request_id: str | None = typer.Option(None, help="request id to record (default: generated)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Erase subjects: delete their rows and retrain only the shards that held them.

    Prints the ErasureReceipt (JSON) on stdout. Exit 0 when every subject was found and erased,
    3 when any had no data (receipt still printed and stored), 2 on bad input, 4 on a conflict.
    """
    init_logging(verbose)
    with exit_on_error():
        job = load_job_config(config) if config else None
        if not storage and not job:
            raise ConfigError("pass --storage URI or --config FILE.yaml")
        store = job.storage if job else StorageConfig(uri=storage or "")
        if storage:
            store = store.model_copy(update={"uri": storage})
        tracking = job.tracking if job else TrackingConfig()
        if tracking_uri:
            tracking = tracking.model_copy(update={"uri": tracking_uri})
        receipt = run(
            store, read_subjects(subject, subjects_file), tracking, job.privacy if job else PrivacyConfig(), request_id
        )
    typer.echo(receipt.model_dump_json(indent=1))
    if receipt.not_found_digests:
        typer.echo(
            f"{len(receipt.not_found_digests)} of {len(receipt.subject_digests)} subject(s) had no data "
            f"(digests in not_found_digests); request {receipt.request_id} is recorded",
            err=True,
        )
        raise typer.Exit(EXIT_NOT_FOUND)


if __name__ == "__main__":
    typer.run(main)
