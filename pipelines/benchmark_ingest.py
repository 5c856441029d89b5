"""Recipe: daily ingests on ratings split by time, measured against full retrains in the same run.

    expunge benchmark ingest --data ../shared/data/ml-100k/ml-100k.inter --batches 30
    expunge benchmark ingest                       (generated ratings with timestamps; no setup)

Rows are ordered by timestamp (ties: record id). Each model trains on the earliest
``train_fraction`` of the rows (S shards of R slices, ``balanced`` placement), then the rest is
ingested in time order as ``batches`` batches of equal row counts (``--windows rows``, the
default) or of equal time spans (``--windows time``; empty spans are skipped). For every batch,
in this order:

1. accuracy of the current model on the batch's rows, before they are ingested: RMSE (clipped
   to the training ratings' range) and NDCG@10 over the batch's users the model knows (the items
   they rate >= 4 in the batch are relevant; candidates: items someone has rated, less the
   user's own; ``benchmark_accuracy.TopN``);
2. the ingest (``Coordinator.ingest``): rows added, refused (erased subjects) and already stored,
   wall seconds, the shard actors' CPU seconds and this process's CPU seconds;
3. ``--erasures-per-batch`` one-subject erasures of random stored subjects (seeded, the same for
   every model), so later batches meet erased people;
4. where scheduled (``--full-every``): a full retrain from scratch on the rows now stored, in a
   fresh store with its own shard actors, and ``ingest CPU / full retrain CPU``;
5. where scheduled (``--check-every``): every shard re-derived from scratch on the recorded
   slice sequence and compared checkpoint by checkpoint (``rederive_shards``): the state the
   batch published, ingest and erasures together, must be bit for bit the same.

The cost of a one-subject erasure (retraining CPU seconds, median of ``--erasure-samples``
random stored subjects) is measured before the first ingest and after the last.

CPU seconds are the figure to compare: on a small machine wall time mostly measures waiting.
Shard actors' CPU (``retrain_cpu_seconds``, ``train_cpu_seconds``) counts each shard's work
from the call's start to its end in the actor process, not the actor's start-up; the driver's
is ``time.process_time`` of this process. Both an ingest and a full retrain are measured the
same way, on the same kind of pool (Ray actors, or in-process with ``--local``). The issue's
goals are reported as ratios, with whether each holds; nothing here fails on them.

Prints one JSON object on stdout; writes it, a Markdown table and a PNG chart to ``--out``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import typer
from pydantic import BaseModel, ConfigDict, Field

from expunge.orchestrator.config import (
    AnyModelConfig,
    IngestConfig,
    ItemStatsConfig,
    JobConfig,
    MFConfig,
    ShardingConfig,
    SyntheticRatingsConfig,
    TrainingConfig,
)
from expunge.orchestrator.coordinator import Coordinator, local_pool, ray_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import DataValidationError
from expunge.orchestrator.evidence.rederive import rederive_shards
from expunge.orchestrator.receipts import IngestReceipt
from expunge.pipelines._runtime import exit_on_error, init_logging, init_ray
from expunge.pipelines.benchmark_accuracy import TopN, ndcg_recall_at_k
from expunge.pipelines.datasets import load_movielens, synthetic_ratings
from expunge.shards.rows import ITEM_ID, RATING, RECORD_ID, SUBJECT_ID

__all__ = [
    "GOALS",
    "BatchRow",
    "IngestBenchmarkSettings",
    "batch_windows",
    "goals",
    "main",
    "movielens_timestamps",
    "run",
    "scheduled",
    "timed_synthetic_ratings",
]

log = logging.getLogger(__name__)

MODELS: tuple[Literal["item_stats"], Literal["mf"]] = ("item_stats", "mf")
_KEY = b"expunge-benchmark-key-not-secret!!"
#: The issue's goals: ingest CPU over a full retrain's, per model, and erasure cost after/before.
GOALS: dict[str, float] = {"mf": 0.1, "item_stats": 0.02, "erasure_after_over_before": 1.5}


class IngestBenchmarkSettings(BaseModel):
    """What one run measures; ``full_every``/``check_every`` per model: see ``scheduled``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    data: Path | None = None  # None: ``synthetic`` ratings with generated timestamps
    synthetic: SyntheticRatingsConfig = SyntheticRatingsConfig()
    train_fraction: float = Field(0.7, gt=0.0, lt=1.0)
    batches: int = Field(30, ge=1)
    windows: Literal["rows", "time"] = "rows"
    shards: int = Field(8, ge=1)
    slices: int = Field(4, ge=1)
    models: tuple[Literal["item_stats", "mf"], ...] = MODELS
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(512, ge=1)
    ingest: IngestConfig = IngestConfig()
    erasures_per_batch: int = Field(2, ge=0)
    erasure_samples: int = Field(3, ge=1)
    full_every: dict[str, int] = {"item_stats": 1, "mf": 0}
    check_every: dict[str, int] = {"item_stats": 1, "mf": 0}
    relevant_from: float = 4.0
    seed: int = 0


class BatchRow(BaseModel):
    """One ingested batch of one model; ``None`` where a figure was not scheduled or does not apply."""

    batch: int
    rows_in_batch: int
    rows_added: int
    rows_refused_erased: int
    rows_already_stored: int
    new_subjects: int
    shards_touched: int
    slices_retrained: int
    slices_merged: int
    max_slices: int
    ingest_seconds: float
    ingest_retrain_seconds: float
    ingest_retrain_cpu_seconds: float
    ingest_driver_cpu_seconds: float
    #: Full retrain from scratch on the rows stored after this batch: shard actors' CPU, this process's CPU, wall.
    full_retrain_cpu_seconds: float | None = None
    full_retrain_driver_cpu_seconds: float | None = None
    full_retrain_seconds: float | None = None
    #: (ingest actors + driver) / (full retrain actors + driver), and actors over actors alone.
    cpu_ratio: float | None = None
    retrain_cpu_ratio: float | None = None
    #: Every shard re-derived from scratch on the recorded slices equals the live one, bit for bit.
    exact: bool | None = None
    first_difference: str | None = None
    rederive_seconds: float | None = None
    #: Accuracy of the model before this batch, on this batch's rows; RMSE also on the rows of
    #: subjects it holds rows of (``known_rows`` of them; the others get the population's prediction).
    rmse: float
    rmse_known_subjects: float | None = None
    known_rows: int = 0
    ndcg_at_10: float | None
    ranked_users: int
    erasure_retrain_cpu_seconds: list[float] = []
    stored_rows: int
    manifest_rows: int


# ----- data: rows, timestamps, batches (pure) ------------------------------------------------------


def timed_synthetic_ratings(config: SyntheticRatingsConfig) -> tuple[pa.Table, np.ndarray]:
    """``synthetic_ratings`` with a timestamp per row: users arrive over 90 days, then rate an item about hourly."""
    rows = synthetic_ratings(config)
    rng = np.random.default_rng(config.seed + 1)
    users = rows.column(SUBJECT_ID).to_pylist()
    gaps = rng.exponential(3_600.0, len(users))
    clock: dict[str, float] = {}
    stamps = np.empty(len(users))
    for n, user in enumerate(users):
        if user not in clock:
            clock[user] = 1_600_000_000.0 + rng.uniform(0.0, 90 * 86_400.0)
        clock[user] += gaps[n]
        stamps[n] = np.floor(clock[user])
    return rows, stamps


def movielens_timestamps(rows: pa.Table, source: str) -> np.ndarray:
    """Timestamps of ``load_movielens`` rows, read back from their record ids (``user:item:timestamp``).

    Raises:
        DataValidationError: the file has no timestamp column (record ids ``user:item``).
    """
    parts = [r.rsplit(":", 2) for r in rows.column(RECORD_ID).to_pylist()]
    items = rows.column(ITEM_ID).to_pylist()
    stamps = np.full(len(parts), np.nan)
    for n, (fields, item) in enumerate(zip(parts, items, strict=True)):
        if len(fields) == 3 and fields[1] == str(item):
            with contextlib.suppress(ValueError):  # left NaN: reported below with the others
                stamps[n] = float(fields[2])
    if np.isnan(stamps).any():
        raise DataValidationError(
            source,
            [
                f"{int(np.isnan(stamps).sum())} row(s) have no timestamp: the ingest benchmark splits rows by time; "
                "give a ratings file with a timestamp column (u.data, ml-100k.inter, ratings.dat or ratings.csv)"
            ],
        )
    return stamps


def batch_windows(
    timestamps: np.ndarray, train_fraction: float, batches: int, windows: Literal["rows", "time"]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pure: (row indexes of the training rows, row indexes of each batch), all in time order.

    Rows are ordered by timestamp (stable: ties keep their order, which the caller sorts by
    record id). Training: the first ``round(train_fraction * n)`` rows. ``rows``: the rest cut
    into ``batches`` runs of equal length (one longer by at most a row); ``time``: the rest cut
    at equal time steps from the last training row's timestamp to the last row's, each window
    half-open on the left, empty windows dropped.
    """
    order = np.argsort(timestamps, kind="stable")
    cut = min(max(1, round(train_fraction * len(order))), len(order) - 1)
    train, rest = order[:cut], order[cut:]
    if windows == "rows":
        parts = np.array_split(rest, min(batches, len(rest)))
    else:
        start, end = timestamps[train[-1]], timestamps[rest[-1]]
        edges = np.linspace(start, end, batches + 1)
        edges[-1] = np.inf
        # A row tied with the last training row's time falls in the first window.
        which = np.clip(np.searchsorted(edges, timestamps[rest], side="left") - 1, 0, batches - 1)
        parts = [rest[which == k] for k in range(batches)]
    return train, [p for p in parts if len(p)]


def scheduled(batches: int, every: int) -> set[int]:
    """Pure: the batch indexes (from 0) a measurement runs after.

    ``every`` >= 1: every ``every``-th batch, and always the first and the last; 0: the first,
    the middle and the last only.
    """
    if batches <= 0:
        return set()
    ends = {0, batches - 1}
    if every <= 0:
        return ends | {(batches - 1) // 2}
    return ends | {k for k in range(batches) if (k + 1) % every == 0}


def goals(summary: Mapping[str, Any], model: str) -> list[dict[str, Any]]:
    """Pure: the issue's goals for ``model`` from its summary: measured ratio, target, and whether each holds."""
    out = []
    ratio = summary.get("cpu_ratio_median")
    out.append(
        {
            "goal": f"ingest CPU <= {GOALS[model]} x a full retrain's ({model}; median over measured batches)",
            "measured": ratio,
            "worst": summary.get("cpu_ratio_max"),
            "target": GOALS[model],
            "holds": None if ratio is None else ratio <= GOALS[model],
            "holds_every_batch": None
            if summary.get("cpu_ratio_max") is None
            else summary["cpu_ratio_max"] <= GOALS[model],
        }
    )
    erasure = summary.get("erasure_after_over_before")
    target = GOALS["erasure_after_over_before"]
    out.append(
        {
            "goal": f"one-subject erasure CPU after the last ingest <= {target} x before the first ({model})",
            "measured": erasure,
            "target": target,
            "holds": None if erasure is None else erasure <= target,
        }
    )
    return out


# ----- measuring ---------------------------------------------------------------------------------


def _load(settings: IngestBenchmarkSettings) -> tuple[pa.Table, np.ndarray]:
    if settings.data is None:
        rows, stamps = timed_synthetic_ratings(settings.synthetic)
    else:
        rows = load_movielens(settings.data)
        stamps = movielens_timestamps(rows, str(settings.data))
    # Ties in time go by record id, so the split does not depend on the file's line order.
    order = np.argsort(rows.column(RECORD_ID).to_numpy(zero_copy_only=False), kind="stable")
    rows, stamps = rows.take(pa.array(order)), stamps[order]
    return rows, stamps


def _model(family: str, settings: IngestBenchmarkSettings, num_items: int) -> TrainingConfig:
    # The item catalogue is fixed up front (items are catalogue data): rows of items first rated
    # after the split must still be valid for the model trained before it.
    model: AnyModelConfig = (
        ItemStatsConfig(num_items=num_items)
        if family == "item_stats"
        else MFConfig(embedding_dim=32, l2=0.1, num_items=num_items)
    )
    return TrainingConfig(model=model, epochs=settings.epochs, batch_size=settings.batch_size, learning_rate=0.01)


def _without(rows: pa.Table, subjects: Sequence[str]) -> pa.Table:
    return rows.filter(pc.invert(pc.is_in(rows.column(SUBJECT_ID), value_set=pa.array(list(subjects), pa.string()))))


class _Accuracy(BaseModel):
    rmse: float
    rmse_known_subjects: float | None
    known_rows: int
    ndcg_at_10: float | None
    ranked_users: int


def _accuracy(
    coordinator: Coordinator, family: str, stored: pa.Table, batch: pa.Table, relevant_from: float
) -> _Accuracy:
    """RMSE on ``batch`` (all rows, and the rows of known subjects) and NDCG@10 of the batch's known users."""
    low, high = pc.min(stored.column(RATING)).as_py(), pc.max(stored.column(RATING)).as_py()
    error = np.clip(coordinator.predict(batch), low, high) - batch.column(RATING).to_numpy().astype(np.float64)
    known = pc.is_in(batch.column(SUBJECT_ID), value_set=pc.unique(stored.column(SUBJECT_ID))).to_numpy(
        zero_copy_only=False
    )
    topn = TopN(stored, batch, relevant_from)
    users = topn.users()
    ndcg = None
    if users and family == "item_stats":
        ranked = {u: coordinator.recommend(u, 10) for u in users}
    elif users:  # one predict call for every (user, candidate) pair: the shard actors score them together
        candidates = [topn.candidates(u) for u in users]
        pairs = pa.table(
            {
                SUBJECT_ID: pa.array(
                    np.repeat(np.asarray(users, dtype=object), [len(c) for c in candidates]), pa.string()
                ),
                ITEM_ID: pa.array(np.concatenate(candidates), pa.int64()),
            }
        )
        scores = coordinator.predict(pairs)
        ranked, start = {}, 0
        for user, items in zip(users, candidates, strict=True):
            order = np.argsort(-scores[start : start + len(items)], kind="stable")  # ties: the smaller item id
            ranked[user] = [int(i) for i in items[order][:10]]
            start += len(items)
    if users:
        ndcg = float(np.mean([ndcg_recall_at_k(ranked[u], topn.relevant[u])[0] for u in users]))
    return _Accuracy(
        rmse=float(np.sqrt(np.mean(error**2))),
        rmse_known_subjects=float(np.sqrt(np.mean(error[known] ** 2))) if known.any() else None,
        known_rows=int(known.sum()),
        ndcg_at_10=ndcg,
        ranked_users=len(users),
    )


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


class _Store:
    """One model's store as the benchmark drives it: the rows it holds and the people it erased, kept in step.

    ``in_process``: the shards run in this process (``local_pool``), so this process's CPU time
    includes theirs; the driver's own share is reported without it.
    """

    def __init__(self, coordinator: Coordinator, rows: pa.Table, in_process: bool, rng: np.random.Generator) -> None:
        self.coordinator = coordinator
        self.rows = rows
        self.erased: set[str] = set()
        self.in_process = in_process
        self.rng = rng

    def driver_cpu(self, process_cpu: float, shards_cpu: float) -> float:
        return process_cpu - shards_cpu if self.in_process else process_cpu

    def erase(self, count: int) -> list[float]:
        """Erase ``count`` random stored subjects, one request each; the retraining CPU seconds of each."""
        subjects = sorted(set(self.rows.column(SUBJECT_ID).to_pylist()))
        chosen = [subjects[int(i)] for i in self.rng.choice(len(subjects), min(count, len(subjects)), replace=False)]
        cpu = [self.coordinator.forget([s]).retrain_cpu_seconds for s in chosen]
        self.erased |= set(chosen)
        self.rows = _without(self.rows, chosen)
        return cpu

    def ingest(self, batch: pa.Table, settings: IngestConfig, source: str) -> IngestReceipt:
        receipt = self.coordinator.ingest(batch, settings=settings, source=source)
        kept = _without(batch, sorted(self.erased & set(batch.column(SUBJECT_ID).to_pylist())))
        self.rows = pa.concat_tables([self.rows, kept.cast(self.rows.schema)])
        return receipt

    def full_retrain(self, job: JobConfig) -> dict[str, float]:
        """Train from scratch on the rows held now, in a fresh store with its own shard pool (fresh actors)."""
        with tempfile.TemporaryDirectory(prefix="expunge-ingest-full-") as scratch:
            reference = Coordinator(
                str(Path(scratch) / "store"),
                self.coordinator.hasher,
                pool_factory=self.coordinator.session.pool_factory,
            )
            try:
                began, cpu = time.perf_counter(), time.process_time()
                shards_cpu = reference.train(self.rows, job).manifest.train_cpu_seconds
                process_cpu, seconds = time.process_time() - cpu, time.perf_counter() - began
            finally:
                reference.close()
        return {
            "full_retrain_cpu_seconds": shards_cpu,
            "full_retrain_driver_cpu_seconds": self.driver_cpu(process_cpu, shards_cpu),
            "full_retrain_seconds": seconds,
        }

    def check(self) -> dict[str, Any]:
        """Every shard re-derived from scratch on its recorded slices and compared checkpoint by checkpoint."""
        began = time.perf_counter()
        manifest = self.coordinator.require_manifest()
        found = rederive_shards(self.coordinator.catalog, manifest, range(manifest.sharding.shards))
        differences = [f"shard {s}: {r.result.first_difference}" for s, r in found.items() if not r.result.exact]
        return {
            "exact": not differences,
            "first_difference": differences[0] if differences else None,
            "rederive_seconds": time.perf_counter() - began,
        }


def _batch_row(number: int, receipt: IngestReceipt, store: _Store, accuracy: _Accuracy, **measured: Any) -> BatchRow:
    return BatchRow(
        batch=number,
        rows_in_batch=receipt.rows_in_batch,
        rows_added=receipt.rows_added,
        rows_refused_erased=receipt.rows_refused_erased,
        rows_already_stored=receipt.rows_already_stored,
        new_subjects=receipt.new_subjects,
        shards_touched=len(receipt.shards),
        slices_retrained=sum(len(s.slices_retrained) for s in receipt.shards),
        slices_merged=sum(len(s.slices_merged) for s in receipt.shards),
        max_slices=max((s.slices_after for s in receipt.shards), default=0),
        ingest_seconds=receipt.seconds,
        ingest_retrain_seconds=receipt.retrain_seconds,
        ingest_retrain_cpu_seconds=receipt.retrain_cpu_seconds,
        ingest_driver_cpu_seconds=store.driver_cpu(receipt.driver_cpu_seconds, receipt.retrain_cpu_seconds),
        **accuracy.model_dump(),
        stored_rows=len(store.rows),
        manifest_rows=store.coordinator.require_manifest().rows,
        **measured,
    )


def _measure_model(
    family: str,
    settings: IngestBenchmarkSettings,
    data: tuple[pa.Table, list[pa.Table]],
    num_items: int,
    in_process: bool,
) -> dict[str, Any]:
    """Train ``family`` on the training rows, then accuracy, ingest, erasures and the scheduled checks per batch."""
    train, batches = data
    job = JobConfig(
        sharding=ShardingConfig(shards=settings.shards, slices=settings.slices, placement="balanced"),
        training=_model(family, settings, num_items),
    )
    full_at = scheduled(len(batches), settings.full_every.get(family, 1))
    check_at = scheduled(len(batches), settings.check_every.get(family, 1))
    rows: list[BatchRow] = []
    with tempfile.TemporaryDirectory(prefix="expunge-ingest-bench-") as scratch:
        pool = local_pool if in_process else ray_pool
        coordinator = Coordinator(str(Path(scratch) / "store"), SubjectHasher(_KEY), pool_factory=pool)
        # The same draws for every model: each erases the same people at the same points.
        store = _Store(coordinator, train, in_process, np.random.default_rng(settings.seed))
        try:
            began, cpu = time.perf_counter(), time.process_time()
            shards_cpu = coordinator.train(train, job).manifest.train_cpu_seconds
            initial = {
                "rows": len(train),
                "seconds": time.perf_counter() - began,
                "cpu_seconds": shards_cpu,
                "driver_cpu_seconds": store.driver_cpu(time.process_time() - cpu, shards_cpu),
            }
            log.info("%s: trained on %d rows in %.1f s", family, len(train), initial["seconds"])
            before = store.erase(settings.erasure_samples)
            for k, batch in enumerate(batches):
                accuracy = _accuracy(coordinator, family, store.rows, batch, settings.relevant_from)
                receipt = store.ingest(batch, settings.ingest, f"batch {k + 1}")
                measured: dict[str, Any] = {"erasure_retrain_cpu_seconds": store.erase(settings.erasures_per_batch)}
                if k in full_at:
                    measured.update(store.full_retrain(job))
                    full = measured["full_retrain_cpu_seconds"] + measured["full_retrain_driver_cpu_seconds"]
                    ingest = receipt.retrain_cpu_seconds + store.driver_cpu(
                        receipt.driver_cpu_seconds, receipt.retrain_cpu_seconds
                    )
                    measured["cpu_ratio"] = _ratio(ingest, full)
                    measured["retrain_cpu_ratio"] = _ratio(
                        receipt.retrain_cpu_seconds, measured["full_retrain_cpu_seconds"]
                    )
                if k in check_at:
                    measured.update(store.check())
                rows.append(_batch_row(k + 1, receipt, store, accuracy, **measured))
                _progress(family, rows[-1], len(batches))
            after = store.erase(settings.erasure_samples)
        finally:
            coordinator.close()
    return {
        "initial_training": initial,
        "batches": [r.model_dump() for r in rows],
        "erasure_before": {"retrain_cpu_seconds": before, "median": statistics.median(before)},
        "erasure_after": {"retrain_cpu_seconds": after, "median": statistics.median(after)},
        "summary": _summary(rows, before, after),
    }


def _progress(family: str, row: BatchRow, batches: int) -> None:
    log.info(
        "%s batch %d/%d: +%d rows (%d refused) in %.2f s, CPU %.2f s shards + %.2f s driver%s%s",
        family,
        row.batch,
        batches,
        row.rows_added,
        row.rows_refused_erased,
        row.ingest_seconds,
        row.ingest_retrain_cpu_seconds,
        row.ingest_driver_cpu_seconds,
        "" if row.cpu_ratio is None else f", {row.cpu_ratio:.3f} of a full retrain",
        "" if row.exact is None else f", exact: {row.exact}",
    )


def _summary(rows: Sequence[BatchRow], before: Sequence[float], after: Sequence[float]) -> dict[str, Any]:
    ratios = [r.cpu_ratio for r in rows if r.cpu_ratio is not None]
    actor_ratios = [r.retrain_cpu_ratio for r in rows if r.retrain_cpu_ratio is not None]
    checked = [r.exact for r in rows if r.exact is not None]
    full = [
        r.full_retrain_cpu_seconds + (r.full_retrain_driver_cpu_seconds or 0.0)
        for r in rows
        if r.full_retrain_cpu_seconds is not None
    ]
    ndcg = [r.ndcg_at_10 for r in rows if r.ndcg_at_10 is not None]
    known = [r.rmse_known_subjects for r in rows if r.rmse_known_subjects is not None]
    return {
        "batches": len(rows),
        "rows_added": sum(r.rows_added for r in rows),
        "rows_refused_erased": sum(r.rows_refused_erased for r in rows),
        "rows_already_stored": sum(r.rows_already_stored for r in rows),
        "ingest_cpu_seconds_median": statistics.median(
            r.ingest_retrain_cpu_seconds + r.ingest_driver_cpu_seconds for r in rows
        ),
        "full_retrain_cpu_seconds_median": statistics.median(full) if full else None,
        "cpu_ratio_median": statistics.median(ratios) if ratios else None,
        "cpu_ratio_max": max(ratios) if ratios else None,
        "retrain_cpu_ratio_median": statistics.median(actor_ratios) if actor_ratios else None,
        "exact": all(checked) if checked else None,
        "batches_checked": len(checked),
        "compactions": sum(1 for r in rows if r.slices_merged),
        "rmse_mean": statistics.fmean(r.rmse for r in rows),
        "rmse_known_subjects_mean": statistics.fmean(known) if known else None,
        "ndcg_at_10_mean": statistics.fmean(ndcg) if ndcg else None,
        "erasure_cpu_before_median": statistics.median(before),
        "erasure_cpu_after_median": statistics.median(after),
        "erasure_after_over_before": _ratio(statistics.median(after), statistics.median(before)),
        "rows_consistent": all(r.stored_rows == r.manifest_rows for r in rows),
    }


def run(settings: IngestBenchmarkSettings, in_process: bool = False) -> dict[str, Any]:
    """Measure every model of ``settings`` on the same time split; the JSON result (``main`` prints it).

    ``in_process``: shards in this process (``local_pool``); otherwise one Ray actor per shard,
    and the caller starts Ray (``init_ray``).
    """
    rows, stamps = _load(settings)
    train_index, batch_indexes = batch_windows(stamps, settings.train_fraction, settings.batches, settings.windows)
    train = rows.take(pa.array(train_index))
    batches = [rows.take(pa.array(b)) for b in batch_indexes]
    num_items = int(pc.max(rows.column(ITEM_ID)).as_py()) + 1
    sizes = [len(b) for b in batches]
    log.info("%d training rows, %d batches of %d-%d rows", len(train), len(batches), min(sizes), max(sizes))
    result: dict[str, Any] = {
        "data": str(settings.data) if settings.data else "synthetic",
        "settings": settings.model_dump(mode="json"),
        "shards_in": "this process" if in_process else "Ray actors",
        "split": {
            "train_rows": len(train),
            "train_until": float(stamps[train_index[-1]]),
            "windows": settings.windows,
            "batch_rows": sizes,
            "batch_until": [float(stamps[b[-1]]) for b in batch_indexes],
            "num_items": num_items,
        },
        "models": {},
    }
    for family in settings.models:
        began = time.perf_counter()
        measured = _measure_model(family, settings, (train, batches), num_items, in_process)
        measured["goals"] = goals(measured["summary"], family)
        measured["seconds"] = time.perf_counter() - began
        result["models"][family] = measured
        log.info("%s measured in %.0f s", family, measured["seconds"])
    return result


# ----- reporting -----------------------------------------------------------------------------------


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(result: Mapping[str, Any]) -> str:
    """The summary per model with its goals, then every batch of every model, as Markdown tables."""
    lines = [
        "| model | batches | rows added | refused (erased) | ingest CPU s (median) | full retrain CPU s (median) "
        "| ingest / full CPU (median, worst) | exact (batches checked) | compactions | erasure CPU s before -> after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for family, measured in result["models"].items():
        s = measured["summary"]
        lines.append(
            f"| {family} | {s['batches']} | {s['rows_added']} | {s['rows_refused_erased']} "
            f"| {_cell(s['ingest_cpu_seconds_median'], 2)} | {_cell(s['full_retrain_cpu_seconds_median'], 2)} "
            f"| {_cell(s['cpu_ratio_median'], 4)}, {_cell(s['cpu_ratio_max'], 4)} "
            f"| {s['exact']} ({s['batches_checked']}) | {s['compactions']} "
            f"| {_cell(s['erasure_cpu_before_median'], 2)} -> {_cell(s['erasure_cpu_after_median'], 2)} "
            f"({_cell(s['erasure_after_over_before'], 2)}x) |"
        )
    lines += ["", "| goal | measured | target | holds |", "|---|---|---|---|"]
    for measured in result["models"].values():
        for g in measured["goals"]:
            lines.append(f"| {g['goal']} | {_cell(g['measured'], 4)} | {g['target']} | {g['holds']} |")
    lines += [
        "",
        "| model | batch | rows in | added | refused | stored | ingest s | ingest CPU s (actors + driver) "
        "| full retrain CPU s | ingest / full | exact | NDCG@10 (users) | RMSE (known subjects) | erasure CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for family, measured in result["models"].items():
        for r in measured["batches"]:
            full = r["full_retrain_cpu_seconds"]
            full_total = None if full is None else full + (r["full_retrain_driver_cpu_seconds"] or 0.0)
            erasures = ", ".join(f"{c:.2f}" for c in r["erasure_retrain_cpu_seconds"]) or "-"
            lines.append(
                f"| {family} | {r['batch']} | {r['rows_in_batch']} | {r['rows_added']} | {r['rows_refused_erased']} "
                f"| {r['rows_already_stored']} | {r['ingest_seconds']:.2f} "
                f"| {r['ingest_retrain_cpu_seconds']:.2f} + {r['ingest_driver_cpu_seconds']:.2f} "
                f"| {_cell(full_total, 2)} | {_cell(r['cpu_ratio'], 4)} "
                f"| {'-' if r['exact'] is None else r['exact']} "
                f"| {_cell(r['ndcg_at_10'])} ({r['ranked_users']}) "
                f"| {r['rmse']:.3f} ({_cell(r['rmse_known_subjects'])}) | {erasures} |"
            )
    return "\n".join(lines) + "\n"


def plot(result: Mapping[str, Any], path: Path, title: str) -> None:
    """PNG: ingest / full retrain CPU, erasure CPU, NDCG@10 and RMSE against the batch, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(11, 7))
    (ratio_axis, erasure_axis), (ndcg_axis, rmse_axis) = axes
    colours = {"item_stats": "tab:blue", "mf": "tab:orange"}
    for family, measured in result["models"].items():
        colour = colours.get(family)
        rows = measured["batches"]
        ratios = [(r["batch"], r["cpu_ratio"]) for r in rows if r["cpu_ratio"]]
        if ratios:
            ratio_axis.plot(*zip(*ratios, strict=True), marker="o", color=colour, label=family)
        ratio_axis.axhline(GOALS[family], linestyle="--", color=colour, label=f"{family} goal {GOALS[family]}")
        erasures = [
            (r["batch"], statistics.median(r["erasure_retrain_cpu_seconds"]))
            for r in rows
            if r["erasure_retrain_cpu_seconds"]
        ]
        if erasures:
            erasure_axis.plot(
                *zip(*erasures, strict=True), marker=".", color=colour, label=f"{family}, after each batch"
            )
        summary = measured["summary"]
        erasure_axis.plot(
            [0, len(rows) + 1],
            [summary["erasure_cpu_before_median"], summary["erasure_cpu_after_median"]],
            "s",
            color=colour,
            markersize=8,
            label=f"{family}, before first / after last (median)",
        )
        ndcg = [(r["batch"], r["ndcg_at_10"]) for r in rows if r["ndcg_at_10"] is not None]
        if ndcg:
            ndcg_axis.plot(*zip(*ndcg, strict=True), marker=".", color=colour, label=family)
        rmse_axis.plot([r["batch"] for r in rows], [r["rmse"] for r in rows], marker=".", color=colour, label=family)
        known = [(r["batch"], r["rmse_known_subjects"]) for r in rows if r["rmse_known_subjects"] is not None]
        if known:
            rmse_axis.plot(*zip(*known, strict=True), ":", color=colour, label=f"{family}, subjects it holds")
    ratio_axis.set(yscale="log", xlabel="batch", ylabel="ingest CPU / full retrain CPU", title="cost of an ingest")
    erasure_axis.set(xlabel="batch", ylabel="retraining CPU s (one subject)", title="cost of an erasure")
    ndcg_axis.set(xlabel="batch", ylabel="NDCG@10 on the next batch", title="top-N, before ingesting the batch")
    rmse_axis.set(xlabel="batch", ylabel="RMSE on the next batch", title="ratings, before ingesting the batch")
    for axis in axes.flat:
        axis.legend(fontsize=7)
        axis.grid(True, alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ----- the command ---------------------------------------------------------------------------------


def per_model(values: Sequence[str], option: str, default: Mapping[str, int]) -> dict[str, int]:
    """``--full-every``/``--check-every`` values: ``N`` for every model, or ``MODEL=N`` (comma lists, repeatable)."""
    out = dict(default)
    for text in (t.strip() for value in values for t in value.split(",") if t.strip()):
        family, _, number = text.rpartition("=")
        if (family and family not in MODELS) or not number.isdigit():
            raise typer.BadParameter(f"{option} {text!r}: give N or MODEL=N (MODEL: {', '.join(MODELS)}), e.g. mf=5")
        for name in [family] if family else MODELS:
            out[name] = int(number)
    return out


def _own_arguments(argv: list[str]) -> list[str]:
    """The options of this recipe, whether run as ``expunge benchmark ingest`` or ``python -m``."""
    return argv[2:] if argv[:2] == ["benchmark", "ingest"] else argv


def main(
    data: Path | None = typer.Option(
        None,
        help="MovieLens ratings with timestamps (u.data, ml-100k.inter, ratings.dat, ratings.csv); "
        "default: generated ratings with timestamps",
    ),
    batches: int = typer.Option(30, min=1, help="batches the rows after the training split are ingested in"),
    windows: str = typer.Option("rows", help="rows: batches of equal row counts; time: of equal time spans"),
    train_fraction: float = typer.Option(
        0.7, min=0.01, max=0.99, help="earliest fraction of the rows trained on first"
    ),
    shards: int = typer.Option(8, min=1, help="S"),
    slices: int = typer.Option(4, min=1, help="R"),
    models: str = typer.Option("item_stats,mf", help="comma list of item_stats, mf"),
    epochs: int = typer.Option(20, min=1, help="MF epochs of a full training (ingested tails: ingest.tail_epochs)"),
    batch_size: int = typer.Option(512, min=1, help="MF rows per optimiser step"),
    erasures_per_batch: int = typer.Option(2, min=0, help="one-subject erasures of random stored subjects per batch"),
    erasure_samples: int = typer.Option(3, min=1, help="erasures timed before the first ingest and after the last"),
    full_every: list[str] = typer.Option(
        [],
        "--full-every",
        metavar="[MODEL=]N",
        help="full retrain every N-th batch (0: first, middle, last); default item_stats=1,mf=0",
    ),
    check_every: list[str] = typer.Option(
        [],
        "--check-every",
        metavar="[MODEL=]N",
        help="exactness check every N-th batch (0: first, middle, last); default item_stats=1,mf=0",
    ),
    seed: int = typer.Option(0, help="erasure choice (and the generated data)"),
    local: bool = typer.Option(False, "--local", help="in-process shards instead of Ray actors"),
    out: Path = typer.Option(
        Path("ingest-benchmark"), "--output", "--out", help="folder for ingest.json, ingest.md and ingest.png"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Ingest benchmark: daily batches split by time against full retrains; cost, exactness, NDCG@10, RMSE.

    Prints one JSON object on stdout; progress goes to stderr. Docs: docs/performance.md, "Ingest".
    """
    init_logging(verbose)
    log.setLevel(logging.INFO)  # progress lines: the run takes minutes
    # The benchmark counts refused rows itself; the engine's warning per batch would repeat it.
    logging.getLogger("expunge.orchestrator.ingest.batch").setLevel(logging.ERROR)
    chosen = tuple(m.strip() for m in models.split(",") if m.strip())
    if not chosen or set(chosen) - set(MODELS):
        raise typer.BadParameter(f"--models {models!r}: a comma list of {', '.join(MODELS)}")
    if windows not in ("rows", "time"):
        raise typer.BadParameter(f"--windows {windows!r}: rows or time")
    defaults = IngestBenchmarkSettings()
    settings = IngestBenchmarkSettings(
        data=data,
        batches=batches,
        windows="rows" if windows == "rows" else "time",
        train_fraction=train_fraction,
        shards=shards,
        slices=slices,
        models=tuple("mf" if m == "mf" else "item_stats" for m in chosen),
        epochs=epochs,
        batch_size=batch_size,
        erasures_per_batch=erasures_per_batch,
        erasure_samples=erasure_samples,
        full_every=per_model(full_every, "--full-every", defaults.full_every),
        check_every=per_model(check_every, "--check-every", defaults.check_every),
        seed=seed,
    )
    # Ray's own lines (raylet warnings) go to stdout: keep stdout for the one JSON object.
    with exit_on_error(), contextlib.redirect_stdout(sys.stderr):
        if data is not None:  # a missing or malformed --data is bad input (exit 2), not a bug
            movielens_timestamps(load_movielens(data), str(data))  # checked before Ray starts
        if not local:
            init_ray()
        result = run(settings, in_process=local)
    result["command"] = shlex.join(["expunge", "benchmark", "ingest", *_own_arguments(sys.argv[1:])])
    out.mkdir(parents=True, exist_ok=True)
    (out / "ingest.md").write_text(markdown(result))
    result["table"] = str(out / "ingest.md")
    try:
        plot(
            result,
            out / "ingest.png",
            f"Ingest on {data.name if data else 'generated ratings'}: S={shards}, R={slices}",
        )
        result["chart"] = str(out / "ingest.png")
    except ImportError:
        log.warning("matplotlib is not installed: no chart (pip install matplotlib)")
        result["chart"] = None
    (out / "ingest.json").write_text(json.dumps(result, indent=1, allow_nan=False))
    typer.echo(json.dumps(result, allow_nan=False))


if __name__ == "__main__":
    typer.run(main)
