"""Recipe: add a batch of new rows to a trained store; only the shards that receive rows retrain.

    expunge ingest --config job.yaml --data new-ratings.parquet
    expunge ingest --config job.yaml --data s3://exports/ratings/2026-12-04/ --request-id daily-2026-12-04
    expunge ingest --config infra/configs/ml100k.yaml --data ml-100k/u1.test
    python -m expunge.pipelines.ingest ...   (the same, as ``ray job submit`` runs it)

Prints the ``IngestReceipt`` (JSON, with the source) on stdout: counts and keyed digests only.
Exit 0 when the batch was ingested or held nothing new (``status``), 2 on bad input (every
problem of the batch in one error; nothing is written), 4 when the store or the data cannot be
reached, another writer holds the store, or another writer published first (ingest again).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pyarrow.compute as pc
import typer

from expunge.orchestrator.cluster import alive_node_count, require_shared_storage
from expunge.orchestrator.config import ErasureConfig, JobConfig, load_job_config
from expunge.orchestrator.coordinator import Coordinator, PoolFactory, ray_pool
from expunge.orchestrator.errors import PersonalDataInTextError
from expunge.orchestrator.lease import StoreLease
from expunge.orchestrator.receipts import IngestReceipt
from expunge.orchestrator.registry.ownership import bind_writer
from expunge.orchestrator.request_ids import check_request_id
from expunge.orchestrator.screening import names_subject
from expunge.orchestrator.session import first_call_pool, in_process_rule, on_a_cluster, published, why_ray_at_once
from expunge.pipelines._runtime import exit_on_error, hasher_from_env, init_logging, init_ray, make_lineage, progress
from expunge.pipelines.datasets import load_batch
from expunge.shards.models import model_for, task_of
from expunge.shards.rows import SUBJECT_ID, validate_rows
from expunge.shards.store import ObjectStore

__all__ = ["main", "outcome", "run"]


def run(
    job: JobConfig,
    data: str,
    data_format: str = "auto",
    request_id: str | None = None,
    tracking_uri: str | None = None,
    erasure: ErasureConfig | None = None,
) -> dict[str, object]:
    """Ingest the batch at ``data`` into ``job``'s store; returns the receipt as JSON-ready data, with the source.

    Everything that can be refused is refused before Ray starts: the key, the request id, an
    untrained store, a store a service holds, a batch that cannot be read or fails validation.

    Without a cluster to join (``RAY_ADDRESS`` unset, Ray not initialised in this process), the
    touched shards retrain in this process and Ray never starts when they are few enough for
    ``erasure`` (default ``job.erasure``: ``in_process_max_shards``, ``in_process_max_cpu_s``), as
    for ``expunge forget``; otherwise Ray starts once the batch is planned and says why.

    Raises:
        ConfigError: no key or another key than the store's, no trained store, a bad request id, or a
            tracking setting naming another registry than the store's.
        DataValidationError: the batch is missing, unreadable or invalid (every problem listed).
        PersonalDataInTextError: the request id names a subject of the batch.
        StoreBusyError, StorageUnavailableError, StorageConflictError: retry (exit 4).
        ClusterUnavailableError: Ray was needed and did not start (exit 4).
    """
    erasure = erasure or job.erasure
    hasher = hasher_from_env(job.privacy)  # fail on a missing key before reading anything
    if request_id is not None:
        check_request_id(request_id)
    _, latest = published(job.storage, hasher)  # an untrained store or a wrong key: refused before Ray
    model_for(latest.model)  # a custom model's module must import here and in the shard actors
    tracking = bind_writer(latest.registry, job.tracking, tracking_uri, job.storage)
    lease = StoreLease(ObjectStore(job.storage), job.storage.lease_ttl_s)
    lease.refuse_if_held()  # a served store: refuse at once
    task = task_of(latest.model)
    with progress("reading and checking the batch"):
        rows = load_batch(data, job.data, task, data_format=data_format, storage=job.storage)
        rows = validate_rows(rows, data, task, model=latest.model)  # the engine checks again; this is before Ray
    if request_id is not None and names_subject(request_id, pc.unique(rows.column(SUBJECT_ID)).to_pylist()):
        # The request id names the receipt's key, the new version and its MLflow run: never a person.
        raise PersonalDataInTextError(
            "the request id names a subject of the batch; it is stored with the receipt and the new version, so "
            "use a batch or ticket reference instead (e.g. daily-2026-12-04), or omit it. Nothing was stored"
        )
    lineage = make_lineage(tracking, job.storage)

    def start_ray(why: str = "") -> None:
        with progress(f"starting Ray ({why})" if why else "starting Ray"):
            init_ray()
        require_shared_storage(job.storage.uri, alive_node_count())  # before any shard writes

    # One lease token for the whole job: the coordinator's recovery on open and the ingest join it.
    with lease.hold("expunge ingest"):
        pool_factory: PoolFactory = ray_pool
        if not (why := why_ray_at_once(erasure, on_a_cluster())):
            # Few shards to retrain and no cluster: they retrain here and Ray never starts (same bits).
            pool_factory = first_call_pool(in_process_rule(erasure, latest), start_ray)
        else:
            start_ray(why)
        coordinator = Coordinator(job.storage, hasher, lineage, pool_factory=pool_factory)
        try:
            # What it did is known from the receipt alone: a batch of rows already stored retrains nothing.
            with progress(f"ingesting {len(rows)} row(s)"):
                receipt = coordinator.ingest(rows, request_id, job.ingest, source=data)
        finally:
            coordinator.close()
    typer.echo(outcome(receipt), err=True)
    for step in receipt.pending:
        typer.echo(f"warning: committed, but still pending (retried by the next writer of the store): {step}", err=True)
    return {"source": data, **receipt.model_dump(mode="json")}


def outcome(receipt: IngestReceipt) -> str:
    """One line for stderr saying what the ingest did: counts and shard numbers only, never an id.

    Rows of erased subjects are refused by design (erased people stay erased): said here, with
    the other counts, not as a warning.
    """
    refused = f"{receipt.rows_refused_erased} refused (erased subjects)"
    if receipt.subjects_refused_erased:
        refused = f"{receipt.rows_refused_erased} refused (of {receipt.subjects_refused_erased} erased subject(s))"
    kept = f"{receipt.rows_already_stored} already stored, {refused}"
    if receipt.status == "nothing_new":
        return (
            f"nothing new in {receipt.rows_in_batch} row(s) ({kept}): no shard retrained, "
            f"version {receipt.model_version_after} stays"
        )
    retrained = sum(len(s.slices_retrained) for s in receipt.shards)
    return (
        f"added {receipt.rows_added} row(s) ({kept}) to shard(s) {receipt.touched_shards}, "
        f"{retrained} slice(s) retrained: version {receipt.model_version_before} -> {receipt.model_version_after}"
    )


def main(
    config: Path = typer.Option(..., help="job config YAML of the trained store (storage, privacy, data.columns)"),
    data: str = typer.Option(
        ...,
        help="the batch: a Parquet file, a folder of Parquet files, a MovieLens ratings file, or s3://bucket/prefix",
    ),
    data_format: Literal["auto", "parquet", "movielens"] = typer.Option(
        "auto", "--format", help="how to read --data (auto: Parquet by its magic bytes, else MovieLens)"
    ),
    request_id: str | None = typer.Option(
        None, help="request id to record (default: generated); a batch or ticket reference, never a person's id"
    ),
    storage: str | None = typer.Option(None, help="override storage.uri"),
    tracking_uri: str | None = typer.Option(
        None,
        help="MLflow tracking URI (default: the one the store recorded at training; another one is refused, but for a copy of a store whose recorded registry serves the original)",
    ),
    in_process_max_shards: int | None = typer.Option(
        None,
        min=0,
        help="without a Ray cluster: retrain at most this many shards in this process instead of starting Ray "
        "(overrides erasure.in_process_max_shards; 0: always start Ray)",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Add a batch of new rows: only the shards that receive rows retrain, from their new slice.

    Rows of erased subjects are refused and counted; rows already stored (same record id, same subject) are left out, so the same batch twice adds nothing.

    Prints the IngestReceipt (JSON, with the source) on stdout; exit 0 (status ingested or nothing_new), 2 on bad input, 4 on an unreachable store or data, a busy store or a lost race.
    """  # one line per paragraph: the help shows a docstring's line breaks as they are (typer's rich help)
    init_logging(verbose)
    with exit_on_error():
        job = load_job_config(config)
        if storage:
            job = job.model_copy(update={"storage": job.storage.model_copy(update={"uri": storage})})
        erasure = job.erasure
        if in_process_max_shards is not None:
            erasure = erasure.model_copy(update={"in_process_max_shards": in_process_max_shards})
        summary = run(job, data, data_format, request_id, tracking_uri, erasure)
    typer.echo(json.dumps(summary))


if __name__ == "__main__":
    typer.run(main)
