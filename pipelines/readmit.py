"""Recipe: re-admit erased subjects who gave new consent (lift their tombstones, with a reason).

    expunge readmit --storage ./expunge-store --subject user-7 --reason "consent ticket 4711"

An erased person stays erased: ``train`` refuses data that holds them. Re-admission is the one
explicit, recorded way back; it is appended to the store's tombstone log with the reason and
a request id. It restores no rows: the next ``train`` on data that holds the person admits them.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from expunge.orchestrator.config import PrivacyConfig, StorageConfig
from expunge.orchestrator.coordinator import Coordinator
from expunge.orchestrator.erasure.pending import check_readmission
from expunge.orchestrator.lease import StoreLease
from expunge.orchestrator.session import published
from expunge.pipelines._runtime import exit_on_error, hasher_from_env, init_logging, job_and_store
from expunge.shards.store import ObjectStore

__all__ = ["main", "run"]


def run(
    storage: StorageConfig,
    subjects: list[str],
    reason: str,
    privacy: PrivacyConfig = PrivacyConfig(),
    request_id: str | None = None,
) -> int:
    """Lift the subjects' tombstones; returns how many of them were tombstoned.

    Raises:
        ConfigError: no key, a key the store was not trained with, no trained store, an empty
            reason or no subject.
        StoreBusyError: another process writes the store (e.g. a running service).
    """
    reason, request_id = check_readmission(subjects, reason, request_id)  # bad input: refused before the lease
    hasher = hasher_from_env(privacy)
    published(storage, hasher)
    # One lease token for the whole job (as forget and ingest): the coordinator's recovery on open and
    # the re-admission join it (the lease is re-entrant within a process); it took one for each.
    with StoreLease(ObjectStore(storage), storage.lease_ttl_s).hold("expunge readmit"):
        coordinator = Coordinator(storage, hasher)  # no pool is started: nothing is trained here
        return coordinator.readmit(subjects, reason, request_id)


def main(
    subject: list[str] = typer.Option([], "--subject", help="subject id to re-admit (repeatable)"),
    reason: str = typer.Option(..., help="why (e.g. the new-consent ticket); recorded in the store"),
    config: Path | None = typer.Option(None, help="job config YAML (for storage and privacy)"),
    storage: str | None = typer.Option(None, help="storage URI (overrides the config)"),
    request_id: str | None = typer.Option(None, help="request id to record (default: generated)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Re-admit erased subjects who gave new consent: lift their tombstones and record why.

    Prints JSON on stdout (subjects named, tombstones lifted). Exit 0 when done; 2 on bad input (no
    reason, no subject, a reason naming a person, no store, a wrong key); 4 when the store does not
    answer or another process holds its lease.
    """
    init_logging(verbose)
    with exit_on_error():
        job, store = job_and_store(config, storage)
        lifted = run(store, subject, reason, job.privacy if job else PrivacyConfig(), request_id)
    typer.echo(json.dumps({"subjects": len(subject), "tombstones_lifted": lifted}))


if __name__ == "__main__":
    typer.run(main)
