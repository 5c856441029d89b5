"""Recipe: train a SISA ensemble from a YAML job config and publish it as a new model version.

expunge train --config infra/configs/synthetic.yaml
python -m expunge.pipelines.train --config ...   (the same, as ``ray job submit`` runs it)
"""

from __future__ import annotations

import json
import logging
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import numpy as np
import pyarrow as pa
import typer

from expunge.orchestrator.catalog import Catalog
from expunge.orchestrator.cluster import alive_node_count, require_shared_storage
from expunge.orchestrator.config import JobConfig, load_job_config
from expunge.orchestrator.errors import ErasedSubjectsInDataError
from expunge.orchestrator.lease import StoreLease
from expunge.orchestrator.training.streaming import RowBatches, SourceSummary, summarise_source, table_batches
from expunge.pipelines._runtime import exit_on_error, hasher_from_env, init_logging, init_ray, make_lineage, progress
from expunge.pipelines.datasets import load_rows, parquet_stream
from expunge.shards.rows import LABEL, RATING
from expunge.shards.store import ObjectStore

if TYPE_CHECKING:  # loaded by ``run``: the coordinator and the models load torch (`train --help` needs neither)
    from expunge.orchestrator.coordinator import Coordinator

__all__ = ["main", "run"]

log = logging.getLogger(__name__)


def evaluate(coordinator: Coordinator, test: pa.Table, task: str) -> dict[str, float]:
    """Test RMSE for ratings, accuracy for classification (empty test set: no metrics)."""
    if len(test) == 0:
        return {}
    predictions = coordinator.predict(test)
    if task == "rating":
        truth = test.column(RATING).to_numpy()
        return {"test_rmse": float(np.sqrt(np.mean((np.clip(predictions, 1, 5) - truth) ** 2)))}
    truth = test.column(LABEL).to_numpy()
    return {"test_accuracy": float(np.mean(np.argmax(predictions, axis=1) == truth))}


def _as_read(rows: pa.Table, source: str) -> pa.Table:
    return rows  # counting only: the trainer validates the rows it trains on


def _without_erased(coordinator: Coordinator, test: pa.Table, say: bool = True) -> tuple[pa.Table, SourceSummary]:
    """The held-out rows without those of subjects the store has erased, and a count of what was left out.

    ``say``: warn that they were left out (not when the data is about to be refused for them).
    """
    erased = frozenset(coordinator.catalog.tombstones())
    if not erased or len(test) == 0:
        return test, SourceSummary()
    found = summarise_source(table_batches(test), coordinator.hasher, _as_read, erased, "held-out rows")
    if found.erased_rows:
        test, _ = coordinator.apply_tombstones(test, "drop")
    if found.erased_rows and say:
        log.warning("left %d held-out row(s) of erased subjects out of the evaluation", found.erased_rows)
    return test, found


def _refuse_erased(coordinator: Coordinator, held_out: SourceSummary, training: RowBatches) -> NoReturn:
    """Refuse data that holds erased subjects, counting all their rows: held out and to train on.

    Raises:
        ErasedSubjectsInDataError: always (``data.erased_subjects: refuse``).
    """
    erased = frozenset(coordinator.catalog.tombstones())
    trained = summarise_source(training, coordinator.hasher, _as_read, erased, "training rows")
    subjects = held_out.erased_subjects | trained.erased_subjects
    raise ErasedSubjectsInDataError(held_out.erased_rows + trained.erased_rows, len(subjects), coordinator.store.uri)


def _one_lease(lease: StoreLease) -> AbstractContextManager[object]:
    """One lease token for the whole job on a trained store (as forget and ingest; review: it took two).

    Opening a trained store may finish an interrupted writer's work under the lease ("recovery"),
    and the training then took it again: two tokens, each tidying the lease history. Held here, both
    join this one (the lease is re-entrant within a process). A store never trained has nothing to
    recover: the training takes the lease itself, after its rows and settings passed their checks,
    so bad input still writes nothing there.
    """
    return lease.hold("expunge train") if Catalog(lease.store).latest() is not None else nullcontext()


def run(job: JobConfig) -> dict[str, object]:
    hasher = hasher_from_env(job.privacy)  # fail on a missing key before loading anything
    from expunge.orchestrator.coordinator import Coordinator  # torch: not for `train --help` or a missing key
    from expunge.shards.models import task_of

    task = task_of(job.training.model)
    # A store that cannot be reached, or that a running service writes: refuse before reading rows and starting Ray.
    lease = StoreLease(ObjectStore(job.storage), job.storage.lease_ttl_s)
    lease.refuse_if_held()
    stream = job.data.source == "parquet"  # read batch by batch: the driver never holds every row
    with progress("reading held-out rows" if stream else "loading and validating rows"):
        rows, test = (pa.table({}), None) if stream else load_rows(job.data, task)
        batches, test = parquet_stream(job.data, task=task) if stream else (None, test)
    with progress("starting Ray"):
        init_ray()
    require_shared_storage(job.storage.uri, alive_node_count())  # before any shard writes
    with _one_lease(lease):
        coordinator = Coordinator(job.storage, hasher, make_lineage(job.tracking, job.storage))
        try:
            # Erased people are neither trained on nor evaluated on (their held-out rows count too).
            test, held_out = _without_erased(coordinator, test, say=job.data.erased_subjects == "drop")
            if held_out.erased_rows and job.data.erased_subjects != "drop":
                _refuse_erased(coordinator, held_out, batches or table_batches(rows))
            shards, slices = job.sharding.shards, job.sharding.slices
            with progress(
                f"training {shards} shard(s) x {slices} slice(s) on {len(rows) or 'streamed'} rows"
                + (", then registering" if job.tracking.enabled else "")
            ):
                if batches is not None:
                    result = coordinator.train_stream(batches, job, request_id="train", source=job.data.path or "")
                else:
                    result = coordinator.train(rows, job, request_id="train")
            metrics: dict[str, object] = {}
            try:
                with progress("evaluating"):
                    metrics = dict(evaluate(coordinator, test, task))
            except Exception as exc:  # after the commit: the version stands, the job is not failed for it
                log.warning("the trained ensemble v%d stands; evaluating it failed: %s", result.manifest.version, exc)
                metrics = {"evaluation_error": f"{type(exc).__name__}: {exc}"[:500]}
        finally:
            coordinator.close()
    return {
        "storage": job.storage.uri,
        "ensemble_version": result.manifest.version,
        "registry_version": result.registry_version,
        "rows": result.manifest.rows,  # after any rows of erased subjects were dropped
        # Every row of the erased subjects left out: those held out for evaluation too.
        "erased_rows_dropped": result.manifest.erased_rows_dropped + held_out.erased_rows,
        "train_seconds": round(result.seconds, 3),
        **({"pending": list(result.pending)} if result.pending else {}),
        **metrics,
    }


def main(
    config: Path = typer.Option(..., exists=False, help="job config YAML (see infra/configs/)"),
    storage: str | None = typer.Option(None, help="override storage.uri"),
    tracking_uri: str | None = typer.Option(None, help="override tracking.uri"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train every shard in parallel on Ray and publish the ensemble as a new model version.

    Prints a JSON summary (store and registry versions, rows, seconds, test metrics) on stdout.
    """
    init_logging(verbose)
    with exit_on_error():
        job = load_job_config(config)
        if storage:
            job = job.model_copy(update={"storage": job.storage.model_copy(update={"uri": storage})})
        if tracking_uri:
            job = job.model_copy(update={"tracking": job.tracking.model_copy(update={"uri": tracking_uri})})
        summary = run(job)
    typer.echo(json.dumps(summary))


if __name__ == "__main__":
    typer.run(main)
