"""Streamed training input: read rows in batches, place them, and stage each shard's rows in the store.

Two passes over a re-iterable source of row batches (a Parquet file or dataset read with
``pyarrow.dataset``), so the driver never holds all rows:

1. ``summarise_source``: validate every batch, digest each distinct subject once, count rows
   per subject digest (what balanced placement needs), the largest item id, and the rows of
   tombstoned subjects.
2. ``stage_source``: validate and digest again, route every row to its cell, and append it
   to its shard's staging Parquet file (one row group per batch and shard); each file is put in
   the store under ``staging/<run>/`` and read by the shard actor (``Shard.train_staged``).

Staged objects hold raw rows. The coordinator deletes them once the shards have trained
(committed or not), and ``expunge.orchestrator.store_purge`` deletes any under ``staging/`` older than a
published version (debris of a crashed run), so they never outlive the training they fed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from expunge.orchestrator.catalog import STAGING_PREFIX, PlacementIndex
from expunge.orchestrator.config import ShardingConfig
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import DataValidationError
from expunge.orchestrator.processes import process_alive
from expunge.orchestrator.training.partition import digest_subjects, place_distinct, row_cells
from expunge.orchestrator.training.placement import Cell
from expunge.shards.manifest import STAGED_SLICE
from expunge.shards.rows import ITEM_ID, RECORD_ID, SUBJECT_DIGEST, SUBJECT_ID
from expunge.shards.store import ObjectStore

__all__ = [
    "RowBatches",
    "SourceSummary",
    "StagedInput",
    "parquet_batches",
    "place_summary",
    "stage_source",
    "summarise_source",
    "sweep_local_staging",
    "table_batches",
]

log = logging.getLogger(__name__)

#: Store prefix of staged training input (raw rows; deleted after training, purged if left).

#: A re-iterable source of row batches: each call starts a fresh pass over the same rows.
RowBatches = Callable[[], Iterator[pa.Table]]

#: ``validate(batch, source) -> canonical batch`` (``expunge.shards.rows.validate_rows`` with the job's task and model).
Validate = Callable[[pa.Table, str], pa.Table]

DEFAULT_BATCH_ROWS = 1 << 17
_UNUSED = Cell(0, 0)


def parquet_batches(path: str, batch_rows: int = DEFAULT_BATCH_ROWS, filesystem: object | None = None) -> RowBatches:
    """Batches of about ``batch_rows`` rows of a Parquet file or folder of Parquet files, in file order.

    Each file is read with its own schema: a folder's files are never cast to the first file's
    types, which would turn a text id ``"01001"`` in a later file into the integer ``1001`` (another
    person) before the identity rule sees it. Small row groups are joined up to ``batch_rows``,
    so a file written one row per group is not validated and staged row by row. ``filesystem``:
    a pyarrow or fsspec filesystem for remote paths (None: local or inferred from the URI).

    Raises:
        DataValidationError: a file Arrow cannot read (named, with Arrow's reason).
    """
    files = sorted(ds.dataset(path, format="parquet", filesystem=filesystem).files)

    def batches() -> Iterator[pa.Table]:
        for file in files:
            try:
                dataset = ds.dataset(file, format="parquet", filesystem=filesystem)
                pending: list[pa.RecordBatch] = []
                held = 0
                for batch in dataset.to_batches(batch_size=batch_rows):
                    if batch.num_rows:
                        pending.append(batch)
                        held += batch.num_rows
                    if held >= batch_rows:
                        yield pa.Table.from_batches(pending)
                        pending, held = [], 0
                if pending:
                    yield pa.Table.from_batches(pending)
            except pa.ArrowException as exc:
                raise DataValidationError(file, [f"cannot be read as Parquet rows: {exc}"]) from exc

    return batches


def table_batches(table: pa.Table, batch_rows: int = DEFAULT_BATCH_ROWS) -> RowBatches:
    """A table read as batches of at most ``batch_rows`` rows (tests, and small in-memory inputs)."""
    return lambda: (table.slice(start, batch_rows) for start in range(0, len(table), batch_rows))


def _numbered(batches: RowBatches, source: str) -> Iterator[tuple[pa.Table, str]]:
    first = 0
    for batch in batches():
        yield batch, f"{source} (rows {first}..{first + len(batch) - 1})"
        first += len(batch)


@dataclass
class SourceSummary:
    """What the first pass learns: rows per subject digest and what resolving the model needs.

    ``subject_rows`` counts rows kept for training (tombstoned subjects' rows excluded);
    ``erased_rows`` / ``erased_subjects`` count the rows and distinct subjects of tombstoned digests.
    """

    rows: int = 0
    subject_rows: dict[str, int] = field(default_factory=dict)
    largest_item: int | None = None
    erased_rows: int = 0
    erased_subjects: set[str] = field(default_factory=set)

    def item_table(self) -> pa.Table:
        """A one-row table with the largest item id (what ``resolve_model`` reads)."""
        return pa.table({ITEM_ID: pa.array([] if self.largest_item is None else [self.largest_item], pa.int64())})


def _erased_mask(digests: pa.Array, erased: frozenset[str]) -> np.ndarray:
    if not erased:
        return np.zeros(len(digests), bool)
    hit = pc.is_in(digests, value_set=pa.array(sorted(erased), pa.string()))
    return np.asarray(hit.to_numpy(zero_copy_only=False), bool)


def summarise_source(
    batches: RowBatches, hasher: SubjectHasher, validate: Validate, erased: frozenset[str], source: str
) -> SourceSummary:
    """First pass: validate each batch (raising its ``DataValidationError``) and count rows per subject.

    Memory: one batch plus one counter per distinct subject.

    Raises:
        DataValidationError: a batch fails validation (named by its row range), or no rows at all.
    """
    summary = SourceSummary()
    for raw, label in _numbered(batches, source):
        batch = validate(raw, label)
        subjects = digest_subjects(hasher, batch.column(SUBJECT_ID))
        erased_rows = _erased_mask(subjects.column(), erased)
        counts = np.bincount(subjects.index[~erased_rows], minlength=len(subjects.distinct))
        for digest, n in zip(subjects.distinct, counts.tolist(), strict=True):
            if n:
                summary.subject_rows[digest] = summary.subject_rows.get(digest, 0) + n
        if erased_rows.any():
            summary.erased_rows += int(erased_rows.sum())
            summary.erased_subjects.update(subjects.distinct[i] for i in np.unique(subjects.index[erased_rows]))
        if ITEM_ID in batch.column_names and len(batch) and not erased_rows.all():
            # Over kept rows only: the catalogue size must not depend on an erased person's items.
            largest = pc.max(batch.column(ITEM_ID).filter(pa.array(~erased_rows))).as_py()
            if largest is not None and (summary.largest_item is None or largest > summary.largest_item):
                summary.largest_item = int(largest)
        summary.rows += len(batch)
    if summary.rows == 0:
        raise DataValidationError(source, ["holds no rows; training needs at least one"])
    return summary


def place_summary(
    summary: SourceSummary, sharding: ShardingConfig, existing: PlacementIndex | None
) -> dict[str, Cell] | None:
    """Home cell of every subject (``balanced``/``hash``), or None in ``row`` mode (rows placed one by one)."""
    if sharding.placement == "row":
        return None
    digests = sorted(summary.subject_rows)
    shard_of, slice_of = place_distinct(
        digests,
        np.array([summary.subject_rows[d] for d in digests], np.int64),
        sharding.shards,
        sharding.slices,
        sharding.placement,
        existing.home_cells() if existing else None,
        existing.rows() if existing else None,
    )
    return {d: Cell(int(s), int(k)) for d, s, k in zip(digests, shard_of.tolist(), slice_of.tolist(), strict=True)}


@dataclass(frozen=True)
class StagedInput:
    """Where each shard's rows were staged (store keys), the placement index and the rows staged."""

    keys: dict[int, str]
    index: PlacementIndex
    rows: int


class _ShardFiles:
    """One local Parquet writer per shard, opened on first use; row groups appended batch by batch."""

    def __init__(self, folder: Path, shards: int) -> None:
        self.folder = folder
        self.shards = shards
        self.writers: dict[int, pq.ParquetWriter] = {}
        self.schema: pa.Schema | None = None

    def path(self, shard: int) -> Path:
        return self.folder / f"{shard:04d}.parquet"

    def write(self, shard: int, rows: pa.Table) -> None:
        if shard not in self.writers:
            self.schema = self.schema or rows.schema
            self.writers[shard] = pq.ParquetWriter(self.path(shard), self.schema, compression="zstd")
        self.writers[shard].write_table(rows.cast(self.schema))

    def close(self) -> None:
        for shard in range(self.shards):
            if shard in self.writers:
                self.writers[shard].close()
            elif self.schema is not None:  # a shard with no rows still gets its (empty) input
                pq.write_table(self.schema.empty_table(), self.path(shard), compression="zstd")
        self.writers.clear()


#: Local staging folders are named ``expunge-staging-<pid>-<random>`` so that a later run can tell
#: whose they are: they hold raw rows, and a killed run never removes its own.
_LOCAL_PREFIX = "expunge-staging-"


def sweep_local_staging(root: str | None = None) -> list[str]:
    """Delete local staging folders of processes that no longer run (killed mid-staging); returns them."""
    removed = []
    base = Path(root or tempfile.gettempdir())
    for folder in base.glob(f"{_LOCAL_PREFIX}*"):
        owner = folder.name[len(_LOCAL_PREFIX) :].split("-", 1)[0]
        if not owner.isdigit() or process_alive(int(owner)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(str(folder))
    if removed:
        log.warning("removed %d local staging folder(s) left by killed training runs", len(removed))
    return removed


def stage_source(
    batches: RowBatches,
    hasher: SubjectHasher,
    validate: Validate,
    erased: frozenset[str],
    sharding: ShardingConfig,
    homes: Mapping[str, Cell] | None,
    store: ObjectStore,
    source: str,
) -> StagedInput:
    """Second pass: route each batch's rows to their cells and stage every shard's rows in the store.

    Rows of ``erased`` digests are left out (the caller refused them after the first pass
    unless it drops them). Each staged row carries ``subject_digest`` and its slice index
    (``expunge.shards.shard.STAGED_SLICE``). Local memory: one batch; disk: the staged rows until
    each shard's file is put in the store (one at a time).

    Raises:
        DataValidationError: a batch fails validation, or names a subject the first pass did
            not see (the source changed between the passes).
    """
    run = f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    entries: dict[str, dict[Cell, int]] = {}
    staged = 0
    sweep_local_staging()
    with tempfile.TemporaryDirectory(prefix=f"{_LOCAL_PREFIX}{os.getpid()}-") as folder:
        files = _ShardFiles(Path(folder), sharding.shards)
        try:
            for raw, label in _numbered(batches, source):
                batch = validate(raw, label)
                subjects = digest_subjects(hasher, batch.column(SUBJECT_ID))
                digests = subjects.column()
                keep = ~_erased_mask(digests, erased)
                batch = batch.append_column(SUBJECT_DIGEST, digests)
                if not keep.all():
                    batch, index = batch.filter(pa.array(keep)), subjects.index[keep]
                else:
                    index = subjects.index
                if homes is None:
                    shard_of, slice_of = row_cells(batch.column(RECORD_ID), sharding.shards, sharding.slices)
                else:
                    present = set(subjects.distinct[i] for i in np.unique(index).tolist())
                    unknown = [d for d in present if d not in homes]
                    if unknown:
                        raise DataValidationError(
                            label,
                            [
                                f"names {len(unknown)} subject(s) the first pass did not see: the source changed "
                                "between the two passes over it; train again on a source nobody writes to meanwhile"
                            ],
                        )
                    cells = [homes.get(d, _UNUSED) for d in subjects.distinct]  # erased ones: filtered out above
                    shard_of = np.array([c.shard for c in cells], np.int64)[index]
                    slice_of = np.array([c.slice for c in cells], np.int64)[index]
                pairs, counts = np.unique(
                    index * (sharding.shards * sharding.slices) + shard_of * sharding.slices + slice_of,
                    return_counts=True,
                )
                for pair, n in zip(pairs.tolist(), counts.tolist(), strict=True):
                    subject, code = divmod(pair, sharding.shards * sharding.slices)
                    cell = Cell(*divmod(code, sharding.slices))
                    held = entries.setdefault(subjects.distinct[subject], {})
                    held[cell] = held.get(cell, 0) + n
                batch = batch.append_column(STAGED_SLICE, pa.array(slice_of.astype(np.int32)))
                files.schema = files.schema or batch.schema
                order = np.argsort(shard_of, kind="stable")
                sizes = np.bincount(shard_of, minlength=sharding.shards)
                ordered, start = batch.take(pa.array(order)), 0
                for shard, size in enumerate(sizes.tolist()):
                    if size:
                        files.write(shard, ordered.slice(start, size))
                    start += size
                staged += len(batch)
        finally:
            files.close()
        keys: dict[int, str] = {}
        try:
            for shard in range(sharding.shards):
                key = f"{run}/{shard:04d}.parquet"
                keys[shard] = key
                store.put(key, files.path(shard).read_bytes())
                files.path(shard).unlink()
        except BaseException:
            store.delete(keys.values())
            raise
    log.info("staged %d row(s) for %d shard(s) under %s", staged, sharding.shards, store.url(run))
    return StagedInput(keys, PlacementIndex(entries), staged)
