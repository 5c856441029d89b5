"""Vectorised partitioning gives the cells, tables and index of the per-row implementation it replaced."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from expunge.orchestrator.catalog import PlacementIndex
from expunge.orchestrator.config import ShardingConfig
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import InvalidSubjectIdError
from expunge.orchestrator.training.partition import cells_of_keys, digest_subjects, partition_rows, place_distinct
from expunge.orchestrator.training.placement import Cell, cell_of_key, place_subjects
from expunge.shards.rows import RECORD_ID, SUBJECT_DIGEST, SUBJECT_ID

HASHER = SubjectHasher(b"k" * 16 + b"partition-tests!")


def per_row_partition(
    rows: pa.Table, sharding: ShardingConfig, hasher: SubjectHasher, existing: PlacementIndex | None = None
) -> tuple[pa.Table, list[list[pa.Table]], PlacementIndex]:
    """The implementation before issue 12 (Python lists per row), kept as the reference."""
    digests = hasher.digest_many(rows.column(SUBJECT_ID).to_pylist())
    rows = rows.append_column(SUBJECT_DIGEST, pa.array(digests, pa.string()))
    if sharding.placement == "row":
        cells = [cell_of_key(r, sharding.shards, sharding.slices) for r in rows.column(RECORD_ID).to_pylist()]
    else:
        counts: dict[str, int] = {}
        for d in digests:
            counts[d] = counts.get(d, 0) + 1
        homes = place_subjects(
            counts,
            sharding.shards,
            sharding.slices,
            sharding.placement,
            existing.home_cells() if existing else None,
            existing.rows() if existing else None,
        )
        cells = [homes[d] for d in digests]
    shard_ids = np.fromiter((c.shard for c in cells), dtype=np.int64, count=len(cells))
    slice_ids = np.fromiter((c.slice for c in cells), dtype=np.int64, count=len(cells))
    parts = [
        [rows.filter(pa.array((shard_ids == s) & (slice_ids == k))).sort_by(RECORD_ID) for k in range(sharding.slices)]
        for s in range(sharding.shards)
    ]
    return rows, parts, PlacementIndex.from_assignment(digests, cells)


def _rows(subjects: list[str], seed: int) -> pa.Table:
    order = np.random.default_rng(seed).permutation(len(subjects))
    return pa.table(
        {
            RECORD_ID: pa.array([f"r{i:05d}" for i in order], pa.string()),
            SUBJECT_ID: pa.array(subjects, pa.string()),
            "item_id": pa.array(np.arange(len(subjects), dtype=np.int64)),
        }
    )


subject_lists = st.lists(
    st.sampled_from(["ann", "bob", " bob", "carl", "dora", "ed", "zoë", "zoe\u0308", "7"]), max_size=80
)
shardings = st.builds(
    ShardingConfig,
    shards=st.integers(1, 6),
    slices=st.integers(1, 5),
    placement=st.sampled_from(["balanced", "hash", "row"]),
)


@settings(max_examples=60, deadline=None)
@given(subject_lists, shardings, st.integers(0, 3))
def test_vectorised_partition_equals_the_per_row_one(subjects, sharding, seed):
    rows = _rows(subjects, seed)
    new_rows, new_parts, new_index = partition_rows(rows, sharding, HASHER)
    old_rows, old_parts, old_index = per_row_partition(rows, sharding, HASHER)
    assert new_rows.equals(old_rows)
    for new_shard, old_shard in zip(new_parts, old_parts, strict=True):
        for new, old in zip(new_shard, old_shard, strict=True):
            assert new.equals(old)
    assert new_index.to_table().equals(old_index.to_table())


@settings(max_examples=40, deadline=None)
@given(subject_lists, subject_lists, shardings)
def test_known_subjects_pin_cells_the_same_way(first, second, sharding):
    existing = per_row_partition(_rows(first, 0), sharding, HASHER)[2]
    rows = _rows(second + first, 1)
    new = partition_rows(rows, sharding, HASHER, existing)
    old = per_row_partition(rows, sharding, HASHER, existing)
    assert new[2].to_table().equals(old[2].to_table())
    assert [[t.column(RECORD_ID).to_pylist() for t in shard] for shard in new[1]] == [
        [t.column(RECORD_ID).to_pylist() for t in shard] for shard in old[1]
    ]


subject_rows = st.dictionaries(
    st.text(alphabet="0123456789abcdef", min_size=8, max_size=8), st.integers(0, 50), max_size=60
)


@given(subject_rows, subject_rows, st.integers(1, 9), st.integers(1, 7), st.sampled_from(["balanced", "hash"]))
def test_place_distinct_decides_as_place_subjects(rows, earlier, shards, slices, mode):
    existing = place_subjects(earlier, shards, slices, mode) if earlier else None
    digests = list(rows)
    shard_of, slice_of = place_distinct(
        digests, np.array([rows[d] for d in digests], np.int64), shards, slices, mode, existing, earlier
    )
    expected = place_subjects(rows, shards, slices, mode, existing, earlier)
    assert {d: Cell(int(s), int(k)) for d, s, k in zip(digests, shard_of, slice_of, strict=True)} == expected


@given(st.lists(st.text(min_size=1, max_size=12), max_size=30), st.integers(1, 40), st.integers(1, 40))
def test_cells_of_keys_is_cell_of_key(keys, shards, slices):
    shard_of, slice_of = cells_of_keys(keys, shards, slices)
    assert [Cell(int(s), int(k)) for s, k in zip(shard_of, slice_of, strict=True)] == [
        cell_of_key(k, shards, slices) for k in keys
    ]


def test_digests_are_computed_once_per_distinct_subject():
    calls: list[int] = []

    class CountingHasher(SubjectHasher):
        def digest_many(self, subject_ids):  # type: ignore[no-untyped-def]
            ids = list(subject_ids)
            calls.append(len(ids))
            return super().digest_many(ids)

    column = pa.chunked_array([["a", "b", "a"], ["b", "c", "a"]])
    digests = digest_subjects(CountingHasher(b"k" * 32), column)
    assert calls == [3]
    assert digests.column().to_pylist() == HASHER.__class__(b"k" * 32).digest_many(column.to_pylist())
    assert digests.counts().tolist() == [3, 2, 1]


def test_refused_subject_ids_raise_as_before():
    with pytest.raises(InvalidSubjectIdError):
        partition_rows(_rows(["ann", ""], 0), ShardingConfig(shards=2, slices=2), HASHER)
