"""Property tests of the pure ingest slice policy (``plan_ingest``, ``place_after``): no I/O, no shards."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from expunge.orchestrator.ingest.slice_policy import IngestLimits, IngestPlan, place_after, plan_ingest
from expunge.orchestrator.training.placement import Cell, cell_of_key

Placement = dict[str, dict[Cell, int]]

digests = st.text(alphabet="0123456789abcdef", min_size=16, max_size=16)
row_counts = st.integers(1, 9)
limits = st.builds(IngestLimits, st.integers(1, 4), st.integers(2, 5))


@dataclass
class Store:
    """What the policy sees of a store: the placement, each shard's slice count, and every digest ever placed."""

    shards: int
    base_slices: int
    placed: Placement
    slice_counts: list[int]
    seen: set[str] = field(default_factory=set)


@st.composite
def trained_stores(draw: st.DrawFn) -> Store:
    """A store right after its first training: every subject in one base cell (subject placement)."""
    shards, base_slices = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    subjects = draw(st.dictionaries(digests, row_counts, max_size=12))
    cells = st.builds(Cell, st.integers(0, shards - 1), st.integers(0, base_slices - 1))
    placed = {d: {draw(cells): rows} for d, rows in subjects.items()}
    return Store(shards, base_slices, placed, [base_slices] * shards, set(placed))


def _draw_batch(data: st.DataObject, store: Store) -> dict[str, int]:
    """Rows of some known subjects and of some subjects never seen (a tombstoned digest never comes back).

    A new digest is 14 drawn hex digits and a counter of the digests seen so far: never one seen before.
    """
    known = data.draw(st.lists(st.sampled_from(sorted(store.placed)), unique=True, max_size=5)) if store.placed else []
    count = data.draw(st.integers(0 if known else 1, 5), label="new subjects")
    stems = data.draw(
        st.lists(st.text(alphabet="0123456789abcdef", min_size=14, max_size=14), min_size=count, max_size=count)
    )
    new = [f"{stem}{len(store.seen) + i:04x}" for i, stem in enumerate(stems)]
    return {d: data.draw(row_counts) for d in [*known, *new]}


def _plan(store: Store, batch: Mapping[str, int], whole_subject: bool, bounds: IngestLimits) -> IngestPlan:
    return plan_ingest(
        batch, store.placed, store.slice_counts, store.base_slices, whole_subject=whole_subject, limits=bounds
    )


def _apply(store: Store, batch: Mapping[str, int], plan: IngestPlan) -> Store:
    counts = list(store.slice_counts)
    for shard, part in plan.shards.items():
        counts[shard] = part.slices_after
    placed = place_after(store.placed, batch, plan)
    return Store(store.shards, store.base_slices, placed, counts, store.seen | set(batch))


def _shards_of(cells: Mapping[Cell, int]) -> set[int]:
    return {c.shard for c in cells}


def _check_plan(store: Store, batch: Mapping[str, int], plan: IngestPlan, whole_subject: bool) -> None:
    """Where the plan puts every batch subject, before compaction."""
    assert set(plan.cells) == set(batch)
    assert set(plan.new_subjects) == {d for d in batch if d not in store.placed}
    for digest, cell in plan.cells.items():
        assert 0 <= cell.shard < store.shards
        tail = store.slice_counts[cell.shard]
        known = store.placed.get(digest)
        if known:
            assert _shards_of(known) == {cell.shard}, "a known subject left its home shard"
            assert cell == (min(known) if whole_subject else Cell(cell.shard, tail))
        else:
            assert cell == Cell(cell_of_key(digest, store.shards, store.base_slices).shard, tail)
    assert set(plan.shards) == {c.shard for c in plan.cells.values()}
    for shard, part in plan.shards.items():
        assert part.slices == store.slice_counts[shard]
        assert {d for ds in part.appends.values() for d in ds} == {d for d, c in plan.cells.items() if c.shard == shard}
        assert part.merge_from is None or part.merge_from == store.base_slices, "a base slice was merged"
        assert part.first_changed <= min(part.appends)


def _check_after(before: Store, batch: Mapping[str, int], after: Store, bounds: IngestLimits) -> None:
    """The store once the plan is applied: bounded, rows conserved, base cells untouched."""
    for shard in range(after.shards):
        assert before.base_slices <= after.slice_counts[shard] <= before.base_slices + bounds.max_tail_slices
    assert set(after.placed) == set(before.placed) | set(batch)
    for digest, cells in after.placed.items():
        assert len(_shards_of(cells)) == 1, f"{digest} spans shards {sorted(_shards_of(cells))}"
        assert len(cells) <= bounds.max_subject_slices, f"{digest} spans {len(cells)} slices"
        assert all(0 <= c.slice < after.slice_counts[c.shard] and rows > 0 for c, rows in cells.items())
        was = before.placed.get(digest, {})
        assert sum(cells.values()) == sum(was.values()) + batch.get(digest, 0), "rows not conserved"
        base_before = {c: n for c, n in was.items() if c.slice < before.base_slices}
        base_after = {c: n for c, n in cells.items() if c.slice < before.base_slices}
        assert set(base_after) == set(base_before), "a base cell moved"
        grown = [c for c, n in base_after.items() if base_before[c] != n]
        assert all(c == min(was) and base_after[c] == base_before[c] + batch[digest] for c in grown)
    rows_before = sum(n for cells in before.placed.values() for n in cells.values())
    rows_after = sum(n for cells in after.placed.values() for n in cells.values())
    assert rows_after == rows_before + sum(batch.values())


def _ingest_sequence(store: Store, whole_subject: bool, bounds: IngestLimits, data: st.DataObject) -> None:
    """Random batches (and erasures) applied one after another, every invariant checked after each."""
    for _ in range(data.draw(st.integers(1, 10), label="ingests")):
        if store.placed and data.draw(st.booleans(), label="erase first"):
            # An erasure drops subjects from the placement (its slices stay, possibly emptied).
            erased = data.draw(st.lists(st.sampled_from(sorted(store.placed)), unique=True, max_size=3))
            store = Store(
                store.shards,
                store.base_slices,
                {d: c for d, c in store.placed.items() if d not in erased},
                store.slice_counts,
                store.seen,
            )
        batch = _draw_batch(data, store)
        plan = _plan(store, batch, whole_subject, bounds)
        _check_plan(store, batch, plan, whole_subject)
        after = _apply(store, batch, plan)
        _check_after(store, batch, after, bounds)
        if whole_subject:
            assert all(len(cells) == 1 for cells in after.placed.values()), "a subject spans two slices"
        untouched = set(range(store.shards)) - set(plan.shards)
        assert all(after.slice_counts[s] == store.slice_counts[s] for s in untouched)
        store = after


@settings(max_examples=150)
@given(trained_stores(), st.booleans(), limits, st.data())
def test_a_sequence_of_ingests_keeps_every_invariant(store, whole_subject, bounds, data):
    _ingest_sequence(store, whole_subject, bounds, data)


@pytest.mark.slow
@settings(max_examples=3000)
@given(trained_stores(), st.booleans(), limits, st.data())
def test_a_long_campaign_of_ingests_keeps_every_invariant(store, whole_subject, bounds, data):
    _ingest_sequence(store, whole_subject, bounds, data)


@settings(max_examples=100)
@given(trained_stores(), st.booleans(), limits, st.data())
def test_a_new_subjects_cell_depends_on_its_digest_alone(store, whole_subject, bounds, data):
    batch = _draw_batch(data, store)
    plan = _plan(store, batch, whole_subject, bounds)
    for digest in plan.new_subjects:
        alone = plan_ingest(
            {digest: 1}, {}, store.slice_counts, store.base_slices, whole_subject=whole_subject, limits=bounds
        )
        assert alone.cells[digest] == plan.cells[digest]
        assert plan.cells[digest].shard == cell_of_key(digest, store.shards, store.base_slices).shard


@settings(max_examples=100)
@given(trained_stores(), st.booleans(), limits, st.data())
def test_the_plan_is_deterministic_and_order_independent(store, whole_subject, bounds, data):
    batch = _draw_batch(data, store)
    plan = _plan(store, batch, whole_subject, bounds)
    assert _plan(store, batch, whole_subject, bounds) == plan
    shuffled = data.draw(st.permutations(list(batch.items())))
    reordered = Store(
        store.shards, store.base_slices, dict(reversed(list(store.placed.items()))), store.slice_counts, store.seen
    )
    again = _plan(reordered, dict(shuffled), whole_subject, bounds)
    assert again == plan
    assert again.shards == plan.shards  # the appended digests' order too (tuples compare in order)
    assert place_after(reordered.placed, dict(shuffled), again) == place_after(store.placed, batch, plan)


def test_compaction_merges_the_tails_once_there_are_too_many():
    limit = IngestLimits(max_tail_slices=2, max_subject_slices=12)
    store = Store(1, 2, {}, [2], set())
    for expected_count in (3, 4, 3, 4, 3):
        new = next(f"{i:016x}" for i in range(1000) if f"{i:016x}" not in store.seen)
        plan = _plan(store, {new: 1}, False, limit)
        store = _apply(store, {new: 1}, plan)
        assert store.slice_counts == [expected_count]
    assert {c.slice for cells in store.placed.values() for c in cells} == {2}


def test_a_subject_spread_over_too_many_slices_compacts_its_shard():
    limit = IngestLimits(max_tail_slices=10, max_subject_slices=3)
    known = "0" * 16
    store = Store(1, 1, {known: {Cell(0, 0): 1}}, [1], {known})
    spans = []
    for _ in range(4):
        plan = _plan(store, {known: 1}, False, limit)
        store = _apply(store, {known: 1}, plan)
        spans.append(len(store.placed[known]))
    assert spans == [2, 3, 2, 3]
    assert sum(store.placed[known].values()) == 5


@pytest.mark.parametrize(
    ("batch", "placed", "slice_counts", "base_slices"),
    [
        ({"a" * 16: 0}, {}, [2, 2], 2),
        ({"a" * 16: -3}, {}, [2, 2], 2),
        ({"a" * 16: 1}, {}, [], 2),
        ({"a" * 16: 1}, {}, [2, 2], 0),
        ({"a" * 16: 1}, {"a" * 16: {Cell(2, 0): 1}}, [2, 2], 2),
        ({"a" * 16: 1}, {"a" * 16: {Cell(-1, 0): 1}}, [2, 2], 2),
    ],
    ids=["no-rows", "negative-rows", "no-shards", "no-base-slices", "placed-past-the-shards", "placed-below-zero"],
)
@pytest.mark.parametrize("whole_subject", [False, True])
def test_invalid_inputs_raise_value_error(batch, placed, slice_counts, base_slices, whole_subject):
    with pytest.raises(ValueError):
        plan_ingest(batch, placed, slice_counts, base_slices, whole_subject=whole_subject)


@pytest.mark.parametrize(("tails", "span"), [(0, 2), (1, 1), (-1, 5)])
def test_limits_below_their_minimum_raise_value_error(tails, span):
    with pytest.raises(ValueError, match="max_tail_slices"):
        IngestLimits(max_tail_slices=tails, max_subject_slices=span)


def test_a_shard_with_fewer_slices_than_the_first_training_is_refused():
    with pytest.raises(ValueError, match="fewer slices"):
        plan_ingest({"a" * 16: 1}, {}, [1, 1], 2, whole_subject=False)
