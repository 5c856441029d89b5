"""A refit after an erasure rewrites the previous fit's matrices on the erased subjects' items only,
and gives what a fit from scratch gives, bit for bit."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from expunge.shards.config import ItemStatsConfig
from expunge.shards.models import ItemStatsModel, item_stats_dense
from expunge.shards.models.item_stats import ItemStatsFit
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


_CONFIGS = [
    ItemStatsConfig(num_items=40, factors=3),
    ItemStatsConfig(num_items=40, factors=0, ranker="edlae", similarity_shrinkage=0.0),
    ItemStatsConfig(num_items=40, factors=2, ranker="dlae", covariance_shrinkage=0.0),
]


@pytest.mark.parametrize("config", _CONFIGS, ids=["ease", "edlae-no-factors", "dlae"])
@given(seed=st.integers(0, 10_000), rounds=st.lists(st.integers(1, 4), min_size=1, max_size=4))
def test_a_chain_of_refits_after_erasures_equals_fits_from_scratch(config, seed, rounds) -> None:
    model = ItemStatsModel(config)
    state = model.accumulate(model.empty(), _rows(seed, 30, config.num_items))
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
        fit = model.refit(state, fit, erased)
        assert fit._inputs is inputs  # carried over (rewritten in place), not built again
        _assert_same_fit(fit, model.fit(state))
        rebuilt, _ = item_stats_dense.build(config, item_stats_dense_pairs(state))
        for name in ("co_count", "co_product", "covariance", "count"):
            carried, fresh = getattr(inputs, name), getattr(rebuilt, name)
            assert (carried is None and fresh is None) or _same_bits(carried, fresh), name


def item_stats_dense_pairs(state) -> item_stats_dense.PairArrays:
    from expunge.shards.models.item_stats import _pair_arrays

    return _pair_arrays(state, state.array("item_count").astype(np.float64))


def test_the_previous_fit_keeps_serving_what_it_served_after_a_refit_took_its_matrices() -> None:
    model = ItemStatsModel(ItemStatsConfig(num_items=40, factors=3))
    rows = _rows(7, 30, 40)
    state = model.accumulate(model.empty(), rows)
    first = model.refit(state)
    before = first.similarity.copy(), first.ranking.copy(), first.predict(rows)
    erased = model.subjects_of(state)[:3]
    model.refit(model.without_subjects(state, erased), first, erased)
    assert first._inputs is None  # given up to the refit
    assert _same_bits(first.similarity, before[0])
    assert _same_bits(first.ranking, before[1])
    assert _same_bits(first.predict(rows), before[2])
    # A second refit from the same fit has nothing to carry over: built from scratch, still exact.
    again = model.without_subjects(state, erased[:1])
    _assert_same_fit(model.refit(again, first, erased[:1]), model.fit(again))


def test_a_refit_from_a_fit_that_is_not_its_removal_is_built_from_scratch_and_says_so(caplog) -> None:
    model = ItemStatsModel(ItemStatsConfig(num_items=40, factors=3))
    state = model.accumulate(model.empty(), _rows(11, 30, 40))
    subjects = model.subjects_of(state)
    fit = model.refit(state)
    other = model.without_subjects(state, subjects[:2])
    with caplog.at_level(logging.WARNING, logger="expunge.shards.models.item_stats"):
        # Vouched for the wrong subjects: items of the really erased ones changed outside theirs.
        wrong = model.refit(other, fit, [subjects[5]])
    assert "do not carry over" in caplog.text
    _assert_same_fit(wrong, model.fit(other))
    with caplog.at_level(logging.WARNING, logger="expunge.shards.models.item_stats"):
        unknown = model.refit(other, wrong, ["not-held"])
    assert caplog.text.count("do not carry over") == 2
    _assert_same_fit(unknown, model.fit(other))


def test_a_plain_fit_keeps_no_matrices_and_a_refit_from_it_builds_them() -> None:
    model = ItemStatsModel(ItemStatsConfig(num_items=40, factors=3))
    state = model.accumulate(model.empty(), _rows(13, 30, 40))
    plain = model.fit(state)
    assert plain._inputs is None
    erased = model.subjects_of(state)[:2]
    after = model.without_subjects(state, erased)
    refit = model.refit(after, plain, erased)
    assert refit._inputs is not None
    _assert_same_fit(refit, model.fit(after))
