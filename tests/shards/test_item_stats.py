"""Item-item sufficient statistics: exact sums, erasure equals summing from scratch, any sharding = one model."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from expunge.orchestrator.config import ItemStatsConfig, SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.errors import ConfigError, UnknownSubjectError
from expunge.orchestrator.evidence.exactness import constituents_equal, tensors_equal
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.models import ItemStatsModel, SufficientStatisticsModel, model_for
from expunge.shards.models.item_stats import ItemStatsState
from expunge.shards.rows import ITEM_ID, RATING, RECORD_ID, SUBJECT_DIGEST, SUBJECT_ID
from tests.engine import from_scratch, job, subject_in_slice, without

RATINGS = synthetic_ratings(SyntheticRatingsConfig(users=60, items=40, ratings_per_user=8, seed=3))
CONFIG = ItemStatsConfig(factors=3, neighbours=10)


def _trained(tmp_path, hasher, shards=3, slices=4, placement="balanced", name="store"):
    coordinator = Coordinator(str(tmp_path / name), hasher, pool_factory=local_pool)
    config = job(CONFIG, shards=shards, slices=slices, placement=placement)
    coordinator.train(RATINGS, config)
    return coordinator, config


def _same_state(left: ItemStatsState, right: ItemStatsState) -> bool:
    return left.subjects == right.subjects and tensors_equal(left.state_dict(), right.state_dict())


def _subjects() -> list[str]:
    return sorted(set(RATINGS.column(SUBJECT_ID).to_pylist()))


@pytest.mark.parametrize("subject_slice", [0, 2, 3])
def test_erasure_equals_summing_from_scratch_without_the_subject(tmp_path, hasher, subject_slice):
    coordinator, config = _trained(tmp_path, hasher)
    subject = subject_in_slice(coordinator, hasher, RATINGS.column(SUBJECT_ID).to_pylist(), subject_slice)
    receipt = coordinator.forget([subject])
    reference = from_scratch(tmp_path, coordinator, without(RATINGS, [subject]), config, hasher)
    assert constituents_equal(coordinator.constituent_tensors(), reference.constituent_tensors()) == {
        0: True,
        1: True,
        2: True,
    }
    assert _same_state(coordinator.statistics().state, reference.statistics().state)  # the aggregated model too
    (retrain,) = receipt.shards
    # Decremental: the subject's contribution leaves the final sums; no later slice is re-summed.
    assert retrain.slices_retrained == (subject_slice,)
    assert hasher.digest(subject) not in coordinator.statistics().state.subjects


def test_hash_placement_is_exact_without_pinning_the_placement(tmp_path, hasher):
    coordinator, config = _trained(tmp_path, hasher, placement="hash")
    subject = _subjects()[5]
    coordinator.forget([subject])
    reference = from_scratch(tmp_path, coordinator, without(RATINGS, [subject]), config, hasher, pin_placement=False)
    assert all(constituents_equal(coordinator.constituent_tensors(), reference.constituent_tensors()).values())
    assert _same_state(coordinator.statistics().state, reference.statistics().state)


def test_the_ensemble_of_any_sharding_is_the_whole_data_model_bit_for_bit(tmp_path, hasher):
    whole, _ = _trained(tmp_path, hasher, shards=1, slices=1, name="whole")
    sharded, _ = _trained(tmp_path, hasher, shards=4, slices=3, name="sharded")
    assert _same_state(whole.statistics().state, sharded.statistics().state)
    assert np.array_equal(whole.predict(RATINGS), sharded.predict(RATINGS))
    subject = _subjects()[9]
    assert whole.recommend(subject, 5) == sharded.recommend(subject, 5)


def test_a_perturbed_reference_is_caught(tmp_path, hasher):
    coordinator, config = _trained(tmp_path, hasher)
    coordinator.forget([_subjects()[0]])
    reference = from_scratch(tmp_path, coordinator, without(RATINGS, _subjects()[:2]), config, hasher)
    assert not _same_state(coordinator.statistics().state, reference.statistics().state)


def _rows(cells: list[tuple[int, int, float]]) -> pa.Table:
    return pa.table(
        {
            RECORD_ID: [f"r{n}" for n in range(len(cells))],
            SUBJECT_DIGEST: [f"subject-{u:03d}" for u, _, _ in cells],
            ITEM_ID: pa.array([i for _, i, _ in cells], pa.int64()),
            RATING: pa.array([r for _, _, r in cells], pa.float32()),
        }
    )


_CELLS = st.lists(
    st.tuples(st.integers(0, 14), st.integers(0, 11), st.sampled_from([x / 2 for x in range(1, 11)])),
    min_size=1,
    max_size=60,
)


@settings(max_examples=40, deadline=None)
@given(cells=_CELLS, groups=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_sums_do_not_depend_on_order_or_grouping(cells, groups, seed):
    """Any split of the subjects into groups, summed in any order, gives the state of all rows at once."""
    model = ItemStatsModel(ItemStatsConfig(num_items=12))
    rows = _rows(cells)
    whole = model.accumulate(model.empty(), rows)
    rng = np.random.default_rng(seed)
    group_of = {u: int(rng.integers(groups)) for u, _, _ in cells}
    subject_group = np.array([group_of[u] for u, _, _ in cells])
    parts = []
    for g in rng.permutation(groups):
        chosen = rows.filter(pa.array(subject_group == g))
        parts.append(model.accumulate(model.empty(), chosen.take(rng.permutation(len(chosen)))))
    combined = model.combine(parts)
    assert _same_state(combined, whole)
    stepwise = model.empty()
    for part in parts:
        stepwise = model.combine([stepwise, part])
    assert _same_state(stepwise, whole)


def test_a_subject_split_over_two_states_is_refused():
    model = ItemStatsModel(ItemStatsConfig(num_items=4))
    first = model.accumulate(model.empty(), _rows([(1, 0, 4.0), (1, 1, 3.0)]))
    with pytest.raises(ValueError, match="one slice"):
        model.accumulate(first, _rows([(1, 2, 5.0)]))


def test_row_placement_is_refused_before_anything_is_written(tmp_path, hasher):
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    with pytest.raises(ConfigError, match="placement"):
        coordinator.train(RATINGS, job(CONFIG, placement="row"))
    assert not (tmp_path / "store").exists()


def test_the_model_is_a_statistics_model_and_the_shard_refuses_to_predict_alone(tmp_path, hasher):
    assert isinstance(model_for(CONFIG.model_copy(update={"num_items": 40})), SufficientStatisticsModel)
    coordinator, _ = _trained(tmp_path, hasher)
    with pytest.raises(ConfigError, match="added up"):
        coordinator.pool.call("predict", {0: (RATINGS,)})


def test_recommend_ranks_unseen_items_and_refuses_unknown_and_erased_subjects(tmp_path, hasher):
    coordinator, _ = _trained(tmp_path, hasher)
    subject = _subjects()[4]
    rated = set(RATINGS.filter(pc.equal(RATINGS.column(SUBJECT_ID), subject)).column(ITEM_ID).to_pylist())
    top = coordinator.recommend(subject, 7)
    assert len(top) == len(set(top)) == 7
    assert not set(top) & rated
    with pytest.raises(UnknownSubjectError, match="no rows"):
        coordinator.recommend("nobody-by-this-name", 3)
    with pytest.raises(ConfigError):
        coordinator.recommend(subject, 0)
    coordinator.forget([subject])
    with pytest.raises(UnknownSubjectError):
        coordinator.recommend(subject, 3)


def test_unknown_subjects_get_the_subject_free_prediction(tmp_path, hasher):
    coordinator, _ = _trained(tmp_path, hasher)
    fit = coordinator.statistics().fit
    rows = pa.table({SUBJECT_ID: ["stranger", "stranger"], ITEM_ID: pa.array([3, 7], pa.int64())})
    predicted = coordinator.predict(rows)
    assert np.array_equal(predicted, fit.mu + fit.item_bias[[3, 7]])


def test_checkpoints_hold_exact_dtypes_only(tmp_path, hasher):
    coordinator, _ = _trained(tmp_path, hasher)
    for tensors in coordinator.constituent_tensors().values():
        assert tensors["optimizer"] is None
        assert {t.dtype for t in tensors["model"].values()} <= {torch.int64, torch.float64}


def test_matrix_factorisation_recommends_unrated_items_too(tmp_path, hasher):
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    coordinator.train(RATINGS, job(shards=2, slices=2))
    subject = _subjects()[2]
    rated = set(RATINGS.filter(pc.equal(RATINGS.column(SUBJECT_ID), subject)).column(ITEM_ID).to_pylist())
    top = coordinator.recommend(subject, 5)
    assert len(top) == 5
    assert not set(top) & rated
    with pytest.raises(UnknownSubjectError):
        coordinator.recommend("nobody-by-this-name", 3)


def test_zero_shrinkage_gives_finite_predictions():
    config = ItemStatsConfig(num_items=6, similarity_shrinkage=0.0, covariance_shrinkage=0.0, factors=2)
    model = ItemStatsModel(config)
    fit = model.fit(model.accumulate(model.empty(), _rows([(1, 0, 4.0), (1, 1, 2.0), (2, 2, 5.0), (2, 0, 3.0)])))
    rows = pa.table({SUBJECT_DIGEST: ["subject-001"] * 6, ITEM_ID: pa.array(range(6), pa.int64())})
    assert np.isfinite(fit.predict(rows)).all()
