"""Decremental item_stats: taking subjects out of the sums equals summing without them, bit for bit."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from expunge.orchestrator.evidence.exactness import tensors_equal
from expunge.shards.config import ItemStatsConfig
from expunge.shards.models import DecrementalStatisticsModel, ItemStatsModel
from expunge.shards.models.item_stats import ItemStatsState
from expunge.shards.rows import ITEM_ID, RATING, SUBJECT_DIGEST

ITEMS = 12
MODEL = ItemStatsModel(ItemStatsConfig(num_items=ITEMS, factors=0))


def _rows(ratings: list[tuple[int, int, float]]) -> pa.Table:
    return pa.table(
        {
            SUBJECT_DIGEST: pa.array([f"s{u:02d}" for u, _, _ in ratings], pa.string()),
            ITEM_ID: pa.array([i for _, i, _ in ratings], pa.int64()),
            RATING: pa.array([r for _, _, r in ratings], pa.float32()),
        }
    )


def _same(left: ItemStatsState, right: ItemStatsState) -> bool:
    return left.subjects == right.subjects and tensors_equal(left.state_dict(), right.state_dict())


ratings = st.lists(
    st.tuples(st.integers(0, 9), st.integers(0, ITEMS - 1), st.sampled_from([0.5, 1.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0])),
    min_size=1,
    max_size=60,
)


def test_item_stats_is_decremental() -> None:
    assert isinstance(MODEL, DecrementalStatisticsModel)


@settings(max_examples=60, deadline=None)
@given(ratings, st.sets(st.integers(0, 9)))
def test_subtracting_subjects_equals_summing_without_them(data, gone) -> None:
    rows = _rows(data)
    whole = MODEL.accumulate(MODEL.empty(), rows)
    digests = rows.column(SUBJECT_DIGEST).to_numpy(zero_copy_only=False)
    leaving = np.isin(digests, [f"s{u:02d}" for u in gone])
    part = MODEL.accumulate(MODEL.empty(), rows.filter(pa.array(leaving)))
    rest = MODEL.accumulate(MODEL.empty(), rows.filter(pa.array(~leaving)))
    assert _same(MODEL.subtract(whole, part), rest)


@settings(max_examples=40, deadline=None)
@given(ratings, ratings)
def test_replacing_a_subjects_rows_equals_summing_the_new_rows(old, added) -> None:
    """An ingest of known subjects: out with their old contribution, in with all their rows."""
    before = _rows(old)
    extra = _rows(added)
    changed = sorted(set(extra.column(SUBJECT_DIGEST).to_pylist()))
    mask = pa.array(np.isin(before.column(SUBJECT_DIGEST).to_numpy(zero_copy_only=False), changed))
    current = MODEL.accumulate(MODEL.empty(), before)
    out = MODEL.accumulate(MODEL.empty(), before.filter(mask))
    into = MODEL.accumulate(MODEL.empty(), pa.concat_tables([before.filter(mask), extra]))
    from_scratch = MODEL.accumulate(MODEL.empty(), pa.concat_tables([before, extra]))
    assert _same(MODEL.combine([MODEL.subtract(current, out), into]), from_scratch)
    assert _same(MODEL.subtract(current, out, into), from_scratch)  # one merge, as a shard's ingest does


def test_a_replacement_for_a_subject_still_in_the_sums_is_refused() -> None:
    whole = MODEL.accumulate(MODEL.empty(), _rows([(0, 1, 3.0), (1, 2, 4.0)]))
    first = MODEL.accumulate(MODEL.empty(), _rows([(0, 1, 3.0)]))
    second_again = MODEL.accumulate(MODEL.empty(), _rows([(1, 2, 4.0), (1, 3, 5.0)]))
    with pytest.raises(ValueError, match="already in the state"):
        MODEL.subtract(whole, first, second_again)


def test_subtracting_a_subject_the_sums_do_not_hold_is_refused() -> None:
    whole = MODEL.accumulate(MODEL.empty(), _rows([(0, 1, 3.0)]))
    stranger = MODEL.accumulate(MODEL.empty(), _rows([(1, 1, 3.0)]))
    with pytest.raises(ValueError, match="not in the state"):
        MODEL.subtract(whole, stranger)


def _pairs_by_hand(rows: pa.Table) -> dict[int, tuple[int, float]]:
    """Pair statistics straight from the definition, one subject at a time (no matrix products)."""
    from collections import defaultdict

    from expunge.shards.models.item_stats import on_grid

    cells: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for digest, item, rating in zip(
        *(rows.column(c).to_pylist() for c in (SUBJECT_DIGEST, ITEM_ID, RATING)), strict=True
    ):
        cells[digest][item].append(rating)
    pairs: dict[int, tuple[int, float]] = {}
    for rated in cells.values():
        items = sorted(rated)
        means = on_grid(np.array([np.mean(on_grid(np.array(rated[i]))) for i in items]))
        centred = on_grid(means - means.sum() / len(items))
        for a in range(len(items)):
            for b in range(a + 1, len(items)):
                key = items[a] * ITEMS + items[b]
                count, product = pairs.get(key, (0, 0.0))
                pairs[key] = (count + 1, product + float(centred[a] * centred[b]))
    return pairs


@settings(max_examples=60, deadline=None)
@given(ratings)
def test_pair_sums_equal_the_definition_including_pairs_whose_products_cancel(data) -> None:
    rows = _rows([*data, (10, 0, 4.0), (10, 1, 4.0)])  # subject 10 rates two items alike: product 0, count 1
    state = MODEL.accumulate(MODEL.empty(), rows)
    expected = _pairs_by_hand(rows)
    assert state.array("pair_index").tolist() == sorted(expected)
    assert state.array("pair_count").tolist() == [expected[k][0] for k in sorted(expected)]
    assert state.array("pair_product").tolist() == [expected[k][1] for k in sorted(expected)]


@settings(max_examples=60, deadline=None)
@given(ratings, st.sets(st.integers(0, 9)), ratings)
def test_the_changed_subjects_parts_move_a_total_as_the_whole_shards_do(data, gone, added) -> None:
    """The ready path's sum (``changed_parts``): only the subjects whose cells changed leave and enter the total.

    Shard A (subjects s00-s04) loses the ``gone`` ones and gains ``added`` rows (new cells for
    subjects it holds, and new subjects); shard B (s05-s09) is the rest of the total.
    """
    rows = _rows(data)
    digests = rows.column(SUBJECT_DIGEST).to_numpy(zero_copy_only=False)
    in_a = np.isin(digests, [f"s{u:02d}" for u in range(5)])
    a_rows, b_rows = rows.filter(pa.array(in_a)), rows.filter(pa.array(~in_a))
    extra = _rows([(u % 5, i, r) for u, i, r in added])
    leaving = np.isin(a_rows.column(SUBJECT_DIGEST).to_numpy(zero_copy_only=False), [f"s{u:02d}" for u in gone])
    staying = a_rows.filter(pa.array(~leaving))
    joined = np.isin(extra.column(SUBJECT_DIGEST).to_numpy(zero_copy_only=False), [f"s{u:02d}" for u in gone])
    a_after_rows = pa.concat_tables([staying, extra.filter(pa.array(~joined))])
    before = MODEL.accumulate(MODEL.empty(), a_rows)
    after = MODEL.accumulate(MODEL.empty(), a_after_rows)
    total = MODEL.combine([before, MODEL.accumulate(MODEL.empty(), b_rows)])
    from_scratch = MODEL.accumulate(MODEL.empty(), pa.concat_tables([a_after_rows, b_rows]))
    out, into = MODEL.changed_parts([before], [after])
    assert _same(MODEL.subtract(total, out, into), from_scratch)
    assert _same(MODEL.subtract(total, out, into), MODEL.subtract(total, before, after))
    unchanged = set(before.subjects) & set(after.subjects) - set(out.subjects)
    assert not unchanged & set(into.subjects)  # a subject whose cells stayed moves nothing


@settings(max_examples=60, deadline=None)
@given(ratings, ratings, st.sets(st.integers(0, 9)))
def test_taking_subjects_out_of_a_total_by_their_stored_cells_equals_summing_without_them(data, added, gone) -> None:
    """The ready path's pure erasure (``without_subjects``): nothing but the total is read.

    The total is two shards' sum after an ingest replaced some subjects' rows (so its subjects
    were not all summed at once); a duplicate rating of one item is a cell with the mean.
    """
    rows = _rows(data)
    digests = rows.column(SUBJECT_DIGEST).to_numpy(zero_copy_only=False)
    in_a = np.isin(digests, [f"s{u:02d}" for u in range(5)])
    total = MODEL.combine(
        [
            MODEL.accumulate(MODEL.empty(), rows.filter(pa.array(in_a))),
            MODEL.accumulate(MODEL.empty(), rows.filter(pa.array(~in_a))),
        ]
    )
    extra = _rows(added)
    moved = sorted(set(extra.column(SUBJECT_DIGEST).to_pylist()))
    old = np.isin(digests, moved)
    total = MODEL.subtract(
        total, MODEL.accumulate(MODEL.empty(), rows.filter(pa.array(old))), MODEL.accumulate(MODEL.empty(), extra)
    )
    everyone = pa.concat_tables([rows.filter(pa.array(~old)), extra])
    names = [f"s{u:02d}" for u in gone if f"s{u:02d}" in set(MODEL.subjects_of(total))]
    keeping = ~np.isin(everyone.column(SUBJECT_DIGEST).to_numpy(zero_copy_only=False), names)
    from_scratch = MODEL.accumulate(MODEL.empty(), everyone.filter(pa.array(keeping)))
    assert _same(MODEL.without_subjects(total, names), from_scratch)


def test_taking_out_a_subject_the_total_does_not_hold_is_refused() -> None:
    total = MODEL.accumulate(MODEL.empty(), _rows([(0, 1, 4.0), (1, 2, 3.0)]))
    with pytest.raises(ValueError, match=r"1 subject\(s\) to take out are not in the state"):
        MODEL.without_subjects(total, ["s00", "s07"])
    assert _same(MODEL.without_subjects(total, []), total)


@pytest.mark.parametrize("per_subject", [1, 4])
def test_a_shard_left_with_no_pairs_or_no_subjects_trains_and_erases(tmp_path, per_subject) -> None:
    """Review: empty sums (no co-rated pair, or every subject erased) are numpy arrays of stride 0.

    Checkpoint format 5 refused to write them, so a training, or the erasure of the last subjects
    of a shard, failed (the person could not be erased).
    """
    from expunge.orchestrator.config import SyntheticRatingsConfig
    from expunge.orchestrator.coordinator import Coordinator, local_pool
    from expunge.orchestrator.digests import SubjectHasher
    from expunge.pipelines.datasets import synthetic_ratings
    from expunge.shards.rows import SUBJECT_ID
    from tests.conftest import TEST_KEY
    from tests.engine import job

    rows = synthetic_ratings(SyntheticRatingsConfig(users=12, items=8, ratings_per_user=per_subject, seed=2))
    coordinator = Coordinator(str(tmp_path / "store"), SubjectHasher(TEST_KEY), pool_factory=local_pool)
    try:
        coordinator.train(rows, job(model=ItemStatsConfig(factors=2), shards=2, slices=2))
        subjects = sorted(set(rows.column(SUBJECT_ID).to_pylist()))
        receipt = coordinator.forget(subjects[:11])  # one subject left: a shard with nobody in it
        assert receipt.status == "erased"
    finally:
        coordinator.close()
