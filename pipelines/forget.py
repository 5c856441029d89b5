"""Recipe: erase data subjects from a trained store and print the erasure receipt.

python -m pipelines.forget --storage ./expunge-store --subject 42 --subject 77
python -m pipelines.forget --storage s3://bucket/expunge --subjects-file tickets.txt
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from orchestrator.config import PrivacyConfig, StorageConfig, TrackingConfig, load_job_config
from orchestrator.coordinator import Coordinator
from orchestrator.errors import ConfigError, ExpungeError
from orchestrator.receipts import ErasureReceipt
from pipelines._runtime import hasher_from_env, init_logging, init_ray, make_lineage

__all__ = ["main", "read_subjects", "run"]

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
    init_ray()
    coordinator = Coordinator(storage, hasher, make_lineage(tracking, storage))
    try:
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
    """Erase subjects: delete their rows and retrain only the shards that held them."""
    init_logging(verbose)
    try:
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
    except ExpungeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    print(receipt.model_dump_json(indent=1))


if __name__ == "__main__":
    typer.run(main)
