"""A refit after an erasure rewrites the previous fit's matrices on the erased subjects' items only,
and gives what a fit from scratch gives, bit for bit."""

from __future__ import annotations

import copy
import logging
import pickle
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from expunge.shards.config import ItemStatsConfig
from expunge.shards.models import ItemStatsModel, item_stats_dense
from expunge.shards.models.item_stats import ItemStatsFit, _pair_arrays
from expunge.shards.rows import ITEM_ID, RATING, SUBJECT_DIGEST


def _rows(seed: int, subjects: int, items: int, per_subject: int = 12) -> pa.Table:
    rng = np.random.default_rng(seed)
    digests, item_ids, ratings = [], [], []
    for u in range(subjects):
        rated = rng.choice(items, size=min(items, int(rng.integers(1, per_subject + 1))), replace=False)
        digests += [f"s{u:04d}"] * len(rated)
        item_ids += [int(i) for i in rated]
        ratings += [float(r) for r in rng.integers(1, 11, len(rated)) / 2.0]
    return pa.table(
        {
            SUBJECT_DIGEST: pa.array(digests, pa.string()),
            ITEM_ID: pa.array(item_ids, pa.int64()),
            RATING: pa.array(ratings, pa.float32()),
        }
    )


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _assert_same_fit(refit: ItemStatsFit, scratch: ItemStatsFit) -> None:
    for name in ("similarity", "factors", "ranking", "item_bias", "rated_items"):
        assert _same_bits(getattr(refit, name), getattr(scratch, name)), name
    assert refit.mu == scratch.mu


def _assert_built(model: ItemStatsModel, state, previous: ItemStatsFit) -> ItemStatsFit:
    """``refit(state, previous)`` built its matrices (no carry-over) and equals ``fit(state)``."""
    fit = model.refit(state, previous)
    assert not fit.carried
    _assert_same_fit(fit, model.fit(state))
    return fit


_CONFIGS = [
    ItemStatsConfig(num_items=40, factors=3),
    ItemStatsConfig(num_items=40, factors=0, ranker="edlae", similarity_shrinkage=0.0),
    ItemStatsConfig(num_items=40, factors=2, ranker="dlae", covariance_shrinkage=0.0),
]


def _pairs(state) -> item_stats_dense.PairArrays:
    return _pair_arrays(state, state.array("item_count").astype(np.float64))


@pytest.mark.parametrize("config", _CONFIGS, ids=["ease", "edlae-no-factors", "dlae"])
@given(seed=st.integers(0, 10_000), rounds=st.lists(st.integers(1, 3), min_size=1, max_size=4))
def test_a_chain_of_refits_after_erasures_equals_fits_from_scratch(config, seed, rounds) -> None:
    model = ItemStatsModel(config)
    state = model.accumulate(model.empty(), _rows(seed, 60, config.num_items, per_subject=3))
    fit = model.refit(state)
    rng = np.random.default_rng(seed)
    for count in rounds:
        held = model.subjects_of(state)
        if len(held) <= count:
            break
        erased = [held[int(i)] for i in rng.choice(len(held), size=count, replace=False)]
        state = model.without_subjects(state, erased)
        inputs = fit._inputs
        assert inputs is not None
        fit = model.refit(state, fit)
        assert fit.carried  # carried over (rewritten in place), not built again
        assert fit._inputs is inputs
        _assert_same_fit(fit, model.fit(state))
        rebuilt, _ = item_stats_dense.build(config, _pairs(state))
        for name in ("co_count", "co_product", "covariance", "count"):
            carried, fresh = getattr(inputs, name), getattr(rebuilt, name)
            assert (carried is None and fresh is None) or _same_bits(carried, fresh), name


def test_the_previous_fit_keeps_serving_what_it_served_after_a_refit_took_its_matrices() -> None:
    model = ItemStatsModel(ItemStatsConfig(num_items=40, factors=3))
    rows = _rows(7, 30, 40, per_subject=4)
    state = model.accumulate(model.empty(), rows)
    first = model.refit(state)
    before = first.similarity.copy(), first.ranking.copy(), first.predict(rows)
    erased = model.subjects_of(state)[:2]
    assert model.refit(model.without_subjects(state, erased), first).carried
    assert first._inputs is None  # given up to the refit
    assert _same_bits(first.similarity, before[0])
    assert _same_bits(first.ranking, before[1])
    assert _same_bits(first.predict(rows), before[2])
    # A second refit from the same fit has nothing to carry over: built from scratch, still exact.
    again = model.without_subjects(state, erased[:1])
    second = model.refit(again, first)
    assert not second.carried
    _assert_same_fit(second, model.fit(again))


def _cells(cells: list[tuple[str, int, float]]) -> pa.Table:
    digests, items, ratings = zip(*cells, strict=True)
    return pa.table(
        {
            SUBJECT_DIGEST: pa.array(list(digests), pa.string()),
            ITEM_ID: pa.array(list(items), pa.int64()),
            RATING: pa.array(list(ratings), pa.float64()),
        }
    )


_BASE = [
    ("a", 0, 5.0), ("a", 1, 1.0), ("a", 2, 3.0),
    ("b", 3, 4.0), ("b", 4, 2.0), ("b", 5, 1.0),
    ("c", 0, 2.0), ("c", 4, 5.0), ("c", 6, 3.0),
    ("d", 7, 4.0), ("d", 8, 1.0),
]  # fmt: skip


@pytest.mark.parametrize(
    "after",
    [
        # b re-rates an item: the same items, every rater count the same
        [(s, i, 5.0 if (s, i) == ("b", 3) else r) for s, i, r in _BASE],
        # a and b swap items 2 and 5: every rater count the same, four pairs changed
        [(s, {("a", 2): 5, ("b", 5): 2}.get((s, i), i), r) for s, i, r in _BASE],
        # d erased, and b re-rated besides (an ingest that joined)
        [(s, i, 5.0 if (s, i) == ("b", 3) else r) for s, i, r in _BASE if s != "d"],
        # another table with the same rater counts
        [(s.upper(), i, 3.0 + (i % 3) - 1) for s, i, r in _BASE],
    ],
    ids=["re-rated", "swapped-pairs", "erased-and-re-rated", "another-table"],
)
def test_a_state_not_made_by_removal_from_the_previous_fits_state_is_built(after) -> None:
    """Review: the carry-over trusted its caller, checking only rater counts; a state that differs
    from the previous one by rating values or pairings got the previous matrices, silently."""
    model = ItemStatsModel(ItemStatsConfig(num_items=12, factors=2))
    previous = model.refit(model.contribution(_cells(_BASE)))
    state = model.contribution(_cells(after))
    _assert_built(model, state, previous)


def test_a_removal_from_another_state_than_the_previous_fits_is_built() -> None:
    model = ItemStatsModel(ItemStatsConfig(num_items=12, factors=2))
    base = model.contribution(_cells(_BASE))
    twin = model.contribution(_cells(_BASE))  # equal, but not the state the fit was made from
    previous = model.refit(twin)
    state = model.without_subjects(base, ["d"])
    fit = model.refit(state, previous)
    assert not fit.carried
    assert previous._inputs is None  # dropped, not kept beside the new ones
    _assert_same_fit(fit, model.fit(state))


def _slow(name: str) -> property:
    def read(self: ItemStatsFit) -> object:
        value = self.__dict__[name]
        time.sleep(0.05)  # another thread runs here
        return value

    def write(self: ItemStatsFit, value: object) -> None:
        self.__dict__[name] = value

    return property(read, write)


class _SlowToGive(ItemStatsFit):
    """A fit whose kept inputs and state take a while to read: another thread runs in between."""

    _inputs = _slow("_inputs")  # type: ignore[assignment]
    _state = _slow("_state")  # type: ignore[assignment]


def _refit_in_two_threads(model: ItemStatsModel, states: list, first: ItemStatsFit) -> list[ItemStatsFit | None]:
    start = threading.Barrier(2)
    fits: list[ItemStatsFit | None] = [None, None]

    def refit(k: int) -> None:
        start.wait()
        fits[k] = model.refit(states[k], first)

    threads = [threading.Thread(target=refit, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return fits


def test_two_threads_refitting_from_one_fit_take_its_matrices_once(caplog) -> None:
    """Review: the check and the take of the previous fit's matrices were two steps, so two threads
    could both pass the check, one then carrying over ``None`` (AttributeError)."""
    model = ItemStatsModel(ItemStatsConfig(num_items=40, factors=3))
    state = model.accumulate(model.empty(), _rows(5, 30, 40, per_subject=4))
    for _ in range(3):
        first = model.refit(state)
        first.__class__ = _SlowToGive  # a thread switch inside the take, every time
        states = [model.without_subjects(state, model.subjects_of(state)[k : k + 1]) for k in (0, 1)]
        with caplog.at_level(logging.WARNING, logger="expunge.shards.models.item_stats"):
            fits = _refit_in_two_threads(model, states, first)
        assert "do not carry over" not in caplog.text  # the second never saw the first's matrices
        assert sorted(bool(f is not None and f.carried) for f in fits) == [False, True]
        for k, fit in enumerate(fits):
            assert fit is not None
            _assert_same_fit(fit, model.fit(states[k]))


def test_a_plain_fit_keeps_no_matrices_and_a_refit_after_it_builds_them() -> None:
    model = ItemStatsModel(ItemStatsConfig(num_items=40, factors=3))
    state = model.accumulate(model.empty(), _rows(13, 30, 40))
    plain = model.fit(state)
    assert plain._inputs is None
    after = model.without_subjects(state, model.subjects_of(state)[:2])
    refit = model.refit(after, plain)
    assert not refit.carried
    assert refit._inputs is not None
    _assert_same_fit(refit, model.fit(after))


def test_erased_subjects_who_rated_over_a_third_of_the_items_are_built() -> None:
    model = ItemStatsModel(ItemStatsConfig(num_items=30, factors=2))
    state = model.accumulate(model.empty(), _rows(17, 40, 30, per_subject=20))
    previous = model.refit(state)
    after = model.without_subjects(state, model.subjects_of(state)[:6])
    _assert_built(model, after, previous)


def test_a_state_keeps_no_link_to_its_parent_when_copied() -> None:
    model = ItemStatsModel(ItemStatsConfig(num_items=12, factors=2))
    state = model.without_subjects(model.contribution(_cells(_BASE)), ["d"])
    assert state._removal is not None
    assert copy.deepcopy(state)._removal is None
    assert pickle.loads(pickle.dumps(state))._removal is None


def test_a_state_changed_in_place_since_its_fit_is_built() -> None:
    """Review: the proof was "the same object"; a state changed in place after its fit (the same
    rater counts, one rating changed) still carried over, with the old products."""
    model = ItemStatsModel(ItemStatsConfig(num_items=12, factors=2))
    state = model.contribution(_cells(_BASE))
    previous = model.refit(state)
    other = model.contribution(_cells([(s, i, 5.0 if (s, i) == ("b", 3) else r) for s, i, r in _BASE]))
    state.load_state_dict(other.state_dict())  # same layout, another rating
    after = model.without_subjects(state, ["d"])
    _assert_built(model, after, previous)
    # And the new state changed in place after the removal:
    previous = model.refit(state)
    after = model.without_subjects(state, ["d"])
    after.item_sum.add_(0.0)
    _assert_built(model, after, previous)


def test_a_state_cannot_be_written_through_its_arrays_and_its_removal_keeps_no_digest() -> None:
    model = ItemStatsModel(ItemStatsConfig(num_items=12, factors=2))
    state = model.without_subjects(model.contribution(_cells(_BASE)), ["a"])
    with pytest.raises(ValueError, match="read-only"):
        state.array("pair_product")[0] = 1.0
    assert state._removal is not None
    assert [items.tolist() for items in state._removal.rated] == [[0, 1, 2]]  # the items "a" rated; no digest
    assert not any(isinstance(v, str) for v in vars(state._removal).values())
