from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from expunge.orchestrator.training.placement import Cell, cell_of_key, place_subjects

subject_rows = st.dictionaries(
    st.text(alphabet="0123456789abcdef", min_size=8, max_size=8), st.integers(1, 50), min_size=1, max_size=60
)
grid = st.tuples(st.integers(1, 8), st.integers(1, 6))


@given(subject_rows, grid, st.sampled_from(["balanced", "hash"]))
def test_every_subject_gets_exactly_one_cell_inside_the_grid(rows, size, mode):
    shards, slices = size
    placed = place_subjects(rows, shards, slices, mode)
    assert set(placed) == set(rows)
    assert all(0 <= c.shard < shards and 0 <= c.slice < slices for c in placed.values())


@given(subject_rows, grid, st.sampled_from(["balanced", "hash"]))
def test_placement_is_deterministic_and_order_independent(rows, size, mode):
    reversed_rows = dict(reversed(list(rows.items())))
    assert place_subjects(rows, *size, mode) == place_subjects(reversed_rows, *size, mode)


@given(subject_rows, grid)
def test_balanced_shard_loads_differ_by_at_most_the_largest_subject(rows, size):
    shards, slices = size
    placed = place_subjects(rows, shards, slices, "balanced")
    loads = [0] * shards
    for subject, cell in placed.items():
        loads[cell.shard] += rows[subject]
    # Greedy largest-first: the last subject added to the fullest shard went to the least loaded one.
    assert max(loads) - min(loads) <= max(rows.values())


@given(subject_rows, subject_rows, grid, st.sampled_from(["balanced", "hash"]))
def test_known_subjects_keep_their_cell_when_new_rows_arrive(first, second, size, mode):
    shards, slices = size
    existing = place_subjects(first, shards, slices, mode)
    merged = {**second, **{s: first[s] + 1 for s in first}}
    again = place_subjects(merged, shards, slices, mode, existing=existing, existing_rows=first)
    assert all(again[s] == existing[s] for s in first)


@given(subject_rows, grid)
def test_hash_cell_depends_only_on_the_subject(rows, size):
    placed = place_subjects(rows, *size, "hash")
    for subject, cell in placed.items():
        assert cell == cell_of_key(subject, *size)
        assert place_subjects({subject: 1}, *size, "hash")[subject] == cell


@settings(max_examples=25)
@given(st.integers(1, 5), st.integers(1, 5))
def test_balanced_fills_every_shard_when_subjects_are_plentiful(shards, slices):
    rows = {f"s{i:04d}": 1 + i % 7 for i in range(shards * slices * 4)}
    placed = place_subjects(rows, shards, slices, "balanced")
    assert {c.shard for c in placed.values()} == set(range(shards))
    assert {c for c in placed.values()} == {Cell(s, k) for s in range(shards) for k in range(slices)}


def test_rejects_an_empty_grid():
    with pytest.raises(ValueError, match="shards and slices"):
        place_subjects({"a": 1}, 0, 1, "balanced")
