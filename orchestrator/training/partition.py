"""Vectorised partitioning: digest each distinct subject once, place subjects, split rows into cells.

The decisions are those of ``expunge.orchestrator.training.placement`` (``place_subjects``, ``cell_of_key``),
computed per distinct subject (or per record id in ``row`` mode) instead of per row in Python
lists; ``tests/orchestrator/test_partition.py`` checks old and new give the same cells.
Everything here is pure (no Ray, no I/O) except for the HMAC of ``SubjectHasher``.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from expunge.orchestrator.catalog import PlacementIndex
from expunge.orchestrator.config import ShardingConfig
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.training.placement import Cell
from expunge.shards.rows import RECORD_ID, SUBJECT_DIGEST, SUBJECT_ID

__all__ = [
    "SubjectDigests",
    "cells_of_keys",
    "digest_subjects",
    "partition_rows",
    "place_distinct",
    "placement_index",
    "row_cells",
    "split_cells",
]

Column: TypeAlias = "pa.Array | pa.ChunkedArray"


@dataclass(frozen=True)
class SubjectDigests:
    """The distinct digests of a column of subject ids and, per row, which one it has.

    ``distinct``: unique digests (hex strings, in first-seen order); ``index``: int64 array
    of length rows, ``distinct[index[i]]`` is row i's digest.
    """

    distinct: list[str]
    index: np.ndarray

    def column(self) -> pa.Array:
        """The per-row digest column (string), as ``SubjectHasher.digest_many`` would give it."""
        return pc.take(pa.array(self.distinct, pa.string()), pa.array(self.index))

    def counts(self) -> np.ndarray:
        """Rows per distinct digest (int64, aligned with ``distinct``)."""
        return np.bincount(self.index, minlength=len(self.distinct)).astype(np.int64)


def digest_subjects(hasher: SubjectHasher, subjects: Column) -> SubjectDigests:
    """HMAC every *distinct* subject id once, then map the rows to them (vectorised).

    Ids are put in canonical form by ``SubjectHasher.digest_many`` (two spellings of one
    person share a digest). Raises ``InvalidSubjectIdError`` like ``digest_many``.
    """
    if len(subjects) == 0:
        return SubjectDigests([], np.zeros(0, np.int64))
    raw_distinct = pc.unique(subjects)
    raw_index = pc.index_in(subjects, value_set=raw_distinct)
    digests = pa.array(hasher.digest_many(raw_distinct.to_pylist()), pa.string())
    distinct = pc.unique(digests)  # canonical forms may merge raw spellings
    remap = pc.index_in(digests, value_set=distinct).to_numpy(zero_copy_only=False).astype(np.int64)
    index = remap[np.asarray(raw_index.to_numpy(zero_copy_only=False), dtype=np.int64)]
    return SubjectDigests(distinct.to_pylist(), index)


def cells_of_keys(keys: Iterable[str], shards: int, slices: int) -> tuple[np.ndarray, np.ndarray]:
    """``cell_of_key`` of many keys at once: (shard, slice) int64 arrays.

    One SHA-256 per key; the big-endian words are reduced with numpy (``uint64 % n`` equals
    Python's ``int.from_bytes(h[:8], "big") % n``).
    """
    hashed = b"".join(hashlib.sha256(k.encode()).digest() for k in keys)
    words = np.frombuffer(hashed, dtype=">u8").reshape(-1, 4)
    return (words[:, 0] % np.uint64(shards)).astype(np.int64), (words[:, 1] % np.uint64(slices)).astype(np.int64)


def _greedy(
    order: Sequence[int], rows: np.ndarray, shard_load: list[int], slice_load: list[list[int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Largest-first greedy of ``place_subjects`` with heaps: the least loaded shard, then slice, ties to the lower index."""
    shard_of = np.zeros(len(rows), np.int64)
    slice_of = np.zeros(len(rows), np.int64)
    shard_heap = [(load, i) for i, load in enumerate(shard_load)]
    heapq.heapify(shard_heap)
    slice_heaps = [[(load, k) for k, load in enumerate(loads)] for loads in slice_load]
    for heap in slice_heaps:
        heapq.heapify(heap)
    for subject in order:
        n = int(rows[subject])
        load, shard = shard_heap[0]
        heapq.heapreplace(shard_heap, (load + n, shard))
        slice_load_, slice_ = slice_heaps[shard][0]
        heapq.heapreplace(slice_heaps[shard], (slice_load_ + n, slice_))
        shard_of[subject], slice_of[subject] = shard, slice_
    return shard_of, slice_of


def place_distinct(
    digests: Sequence[str],
    rows: np.ndarray,
    shards: int,
    slices: int,
    mode: Literal["balanced", "hash"],
    existing: Mapping[str, Cell] | None = None,
    existing_rows: Mapping[str, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``place_subjects`` for distinct ``digests`` with row counts ``rows``: (shard, slice) arrays aligned with them.

    Same decisions as ``expunge.orchestrator.training.placement.place_subjects`` (known subjects keep their
    cell; new ones hashed, or placed largest first, ties by digest, on the least loaded shard
    and slice counting rows already placed), at O(subjects log S) instead of O(subjects x S).

    Raises:
        ValueError: ``shards`` or ``slices`` below 1.
    """
    if shards < 1 or slices < 1:
        raise ValueError(f"shards and slices must be >= 1, got {shards}, {slices}")
    existing = existing or {}
    shard_of = np.full(len(digests), -1, np.int64)
    slice_of = np.full(len(digests), -1, np.int64)
    new = []
    for i, digest in enumerate(digests):
        cell = existing.get(digest)
        if cell is None:
            new.append(i)
        else:
            shard_of[i], slice_of[i] = cell.shard, cell.slice
    if mode == "hash":
        if new:
            shard_of[new], slice_of[new] = cells_of_keys((digests[i] for i in new), shards, slices)
        return shard_of, slice_of
    counts = dict(existing_rows or {})
    counts.update({d: int(n) for d, n in zip(digests, rows, strict=True)})
    shard_load = [0] * shards
    slice_load = [[0] * slices for _ in range(shards)]
    for subject, cell in existing.items():
        n = counts.get(subject, 0)
        shard_load[cell.shard] += n
        slice_load[cell.shard][cell.slice] += n
    order = sorted(new, key=lambda i: (-int(rows[i]), digests[i]))
    placed_shard, placed_slice = _greedy(order, rows, shard_load, slice_load)
    shard_of[new], slice_of[new] = placed_shard[new], placed_slice[new]
    return shard_of, slice_of


def row_cells(record_ids: Column, shards: int, slices: int) -> tuple[np.ndarray, np.ndarray]:
    """``row`` placement: each row's cell from its record id alone."""
    return cells_of_keys((str(r) for r in record_ids.to_pylist()), shards, slices)


def placement_index(
    digests: Sequence[str], index: np.ndarray, shard_of_row: np.ndarray, slice_of_row: np.ndarray, slices: int
) -> PlacementIndex:
    """The ``PlacementIndex`` of rows (digest ``digests[index[i]]`` in cell ``(shard_of_row[i], slice_of_row[i])``)."""
    if len(index) == 0:
        return PlacementIndex({})
    cell_codes = shard_of_row * slices + slice_of_row
    width = int(cell_codes.max()) + 1
    pairs, counts = np.unique(index * width + cell_codes, return_counts=True)
    entries: dict[str, dict[Cell, int]] = {}
    for pair, n in zip(pairs.tolist(), counts.tolist(), strict=True):
        subject, code = divmod(pair, width)
        entries.setdefault(digests[subject], {})[Cell(*divmod(code, slices))] = n
    return PlacementIndex(entries)


def split_cells(
    rows: pa.Table, shard_of_row: np.ndarray, slice_of_row: np.ndarray, sharding: ShardingConfig
) -> list[list[pa.Table]]:
    """``[shard][slice]`` tables, each sorted by record id (stable: ties keep the input order).

    One sort by record id, one stable sort by cell, then zero-copy slices.
    """
    by_record = np.asarray(pc.sort_indices(rows, [(RECORD_ID, "ascending")]).to_numpy(), np.int64)
    codes = (shard_of_row * sharding.slices + slice_of_row)[by_record]
    order = by_record[np.argsort(codes, kind="stable")]
    ordered = rows.take(pa.array(order))
    sizes = np.bincount(codes, minlength=sharding.shards * sharding.slices)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return [
        [
            ordered.slice(int(starts[s * sharding.slices + k]), int(sizes[s * sharding.slices + k]))
            for k in range(sharding.slices)
        ]
        for s in range(sharding.shards)
    ]


def partition_rows(
    rows: pa.Table, sharding: ShardingConfig, hasher: SubjectHasher, existing: PlacementIndex | None = None
) -> tuple[pa.Table, list[list[pa.Table]], PlacementIndex]:
    """Add subject digests and split rows into ``[shard][slice]`` tables sorted by record id.

    Returns the rows with a ``subject_digest`` column appended, the cell tables and the
    placement index (digests only). ``existing`` pins known subjects to their persisted cells
    (``balanced`` and ``hash``). Raises ``InvalidSubjectIdError`` for refused subject ids.
    """
    subjects = digest_subjects(hasher, rows.column(SUBJECT_ID))
    rows = rows.append_column(SUBJECT_DIGEST, subjects.column())
    if sharding.placement == "row":
        shard_of_row, slice_of_row = row_cells(rows.column(RECORD_ID), sharding.shards, sharding.slices)
    else:
        shard_of, slice_of = place_distinct(
            subjects.distinct,
            subjects.counts(),
            sharding.shards,
            sharding.slices,
            sharding.placement,
            existing.home_cells() if existing else None,
            existing.rows() if existing else None,
        )
        shard_of_row, slice_of_row = shard_of[subjects.index], slice_of[subjects.index]
    parts = split_cells(rows, shard_of_row, slice_of_row, sharding)
    return rows, parts, placement_index(subjects.distinct, subjects.index, shard_of_row, slice_of_row, sharding.slices)
