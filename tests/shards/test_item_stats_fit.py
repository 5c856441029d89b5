"""The faster paths of item_stats give what the plain ones give: top eigenpairs, and merges of many states."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from expunge.orchestrator.evidence.exactness import tensors_equal
from expunge.shards.config import ItemStatsConfig
from expunge.shards.models import ItemStatsModel, item_stats, item_stats_dense
from expunge.shards.rows import ITEM_ID, RATING, SUBJECT_DIGEST


def _random_rows(seed: int, subjects: int, items: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, subjects, 40 * subjects)
    return pa.table(
        {
            SUBJECT_DIGEST: pa.array([f"s{u:04d}" for u in users], pa.string()),
            ITEM_ID: pa.array(rng.integers(0, items, len(users)), pa.int64()),
            RATING: pa.array(rng.integers(1, 11, len(users)) / 2.0, pa.float32()),
        }
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_eigenpairs_span_what_a_full_decomposition_spans(seed) -> None:
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(120, 120))
    matrix = basis @ np.diag(np.linspace(0.0, 50.0, 120) ** 2) @ basis.T / 120
    values, vectors = item_stats._top_eigenpairs(matrix, 6)
    full_values, full_vectors = np.linalg.eigh(matrix)
    top = np.argsort(full_values)[::-1][:6]
    np.testing.assert_allclose(values, full_values[top], rtol=1e-9)
    np.testing.assert_allclose(vectors @ vectors.T, full_vectors[:, top] @ full_vectors[:, top].T, atol=1e-8)
    again = item_stats._top_eigenpairs(matrix, 6)
    assert np.array_equal(again[0], values)
    assert np.array_equal(again[1], vectors)  # the same matrix gives the same bits


def test_the_fit_predicts_what_the_full_decomposition_predicts(monkeypatch) -> None:
    model = ItemStatsModel(ItemStatsConfig(num_items=60, factors=4))
    rows = _random_rows(3, 50, 60)
    state = model.accumulate(model.empty(), rows)
    fast = model.fit(state).predict(rows)

    def full(matrix: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        values, vectors = np.linalg.eigh(matrix)
        top = np.argsort(values)[::-1][:count]
        return values[top], vectors[:, top]

    monkeypatch.setattr(item_stats, "_top_eigenpairs", full)
    np.testing.assert_allclose(fast, model.fit(state).predict(rows), rtol=1e-9, atol=1e-9)


def test_many_states_merge_by_bins_as_by_sorting(monkeypatch) -> None:
    model = ItemStatsModel(ItemStatsConfig(num_items=30, factors=0))
    rows = _random_rows(4, 24, 30)
    digests = np.asarray(rows.column(SUBJECT_DIGEST).to_pylist())
    last = np.array([int(d[-1]) for d in digests])
    parts = [model.accumulate(model.empty(), rows.filter(pa.array(last % 4 == group))) for group in range(4)]
    by_bins = model.combine(parts)
    monkeypatch.setattr(item_stats, "_MAX_PAIR_BINS", 0)
    by_sorting = model.combine(parts)
    assert tensors_equal(by_bins.state_dict(), by_sorting.state_dict())
    assert tensors_equal(by_bins.state_dict(), model.accumulate(model.empty(), rows).state_dict())


def _slices(rows: pa.Table, count: int) -> list[pa.Table]:
    last = np.array([int(d[-1]) for d in rows.column(SUBJECT_DIGEST).to_pylist()])
    return [rows.filter(pa.array(last % count == k)) for k in range(count)]


def test_summing_every_slice_in_one_pass_gives_the_step_by_step_sums() -> None:
    from expunge.shards.training import accumulate_steps

    model = ItemStatsModel(ItemStatsConfig(num_items=30, factors=0))
    slices = _slices(_random_rows(5, 30, 30), 3)
    written: list[int] = []
    one_pass = accumulate_steps(model, slices, None, lambda step, _: written.append(step), final_only=True)
    stepwise = accumulate_steps(model, slices, None, lambda *_: None)
    assert written == [2]
    assert one_pass.steps_done == stepwise.steps_done == 3
    assert tensors_equal(one_pass.module.state_dict(), stepwise.module.state_dict())


def test_one_pass_refuses_a_subject_in_two_slices_as_step_by_step_does() -> None:
    from expunge.shards.training import accumulate_steps

    model = ItemStatsModel(ItemStatsConfig(num_items=30, factors=0))
    slices = _slices(_random_rows(6, 30, 30), 3)
    slices[2] = pa.concat_tables([slices[2], slices[0].slice(0, 1)])
    for final_only in (True, False):
        with pytest.raises(ValueError, match="more than one"):
            accumulate_steps(model, slices, None, lambda *_: None, final_only=final_only)


def test_top_eigenpairs_of_repeated_eigenvalues_do_not_depend_on_what_ran_before() -> None:
    """Lanczos (ARPACK) restarted from a random vector after an invariant subspace: the identity's
    eigenvectors changed with the calls made before it (adversarial review)."""
    identity = np.eye(40)
    first = item_stats._top_eigenpairs(identity, 3)
    low_rank = np.outer(np.arange(40.0), np.arange(40.0)) + np.outer(np.ones(40), np.ones(40))
    item_stats._top_eigenpairs(low_rank, 3)
    item_stats._top_eigenpairs(np.zeros((40, 40)), 3)
    again = item_stats._top_eigenpairs(identity, 3)
    assert np.array_equal(first[0], again[0])
    assert np.array_equal(first[1], again[1])


class _TwoArgumentSubtract:
    """A decremental model written before ``subtract`` took a replacement (a bring-your-own model)."""

    def __init__(self, model: ItemStatsModel) -> None:
        self._model = model

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def subtract(self, state, part):
        return self._model.subtract(state, part)


def test_a_model_with_the_two_argument_subtract_still_ingests_exactly(tmp_path) -> None:
    """Adversarial review: every ingest called subtract(state, part, replacement): TypeError."""
    from expunge.shards.config import TrainingConfig
    from expunge.shards.models import DecrementalStatisticsModel
    from expunge.shards.rows import RECORD_ID
    from expunge.shards.shard import Shard

    config = ItemStatsConfig(num_items=30, factors=0)
    rows = _random_rows(7, 12, 30)
    rows = rows.append_column(RECORD_ID, pa.array([f"r{i:05d}" for i in range(len(rows))]))
    slices = [t.sort_by(RECORD_ID) for t in _slices(rows, 2)]
    subject = slices[0].column(SUBJECT_DIGEST)[0].as_py()
    extra = pa.table(
        {
            SUBJECT_DIGEST: [subject, subject],
            ITEM_ID: pa.array([1, 2], pa.int64()),
            RATING: pa.array([4.5, 1.0], pa.float32()),
            RECORD_ID: ["new-1", "new-2"],
        }
    ).select(slices[0].column_names)
    finals = []
    for name, wrap in (("new", False), ("old", True)):
        shard = Shard(0, str(tmp_path / name), TrainingConfig(model=config), config)
        if wrap:
            shard.model = _TwoArgumentSubtract(shard.model)
            assert isinstance(shard.model, DecrementalStatisticsModel)
        shard.train(slices, "train")
        shard.ingest({0: extra.cast(slices[0].schema)}, "ingest-1", 2)
        finals.append(shard.final_state().module.state_dict())
    assert tensors_equal(finals[0], finals[1])


def test_a_shard_process_loads_scipy_only_when_item_stats_sums_or_fits(tmp_path) -> None:
    """Every shard actor imports the model classes; scipy (about 0.1-0.2 s) is for item_stats only."""
    import subprocess
    import sys

    code = "import sys, expunge.shards.actor; print('scipy' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def _latent_rows(seed: int, subjects: int, items: int, per_subject: int) -> pa.Table:
    """Ratings of a rank-16 model whose latent scales decay (0.8^j): a covariance with a spectral gap."""
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(subjects, 16))
    things = rng.normal(size=(items, 16)) * 0.8 ** np.arange(16)
    who = np.repeat(np.arange(subjects), per_subject)
    what = np.concatenate([rng.choice(items, per_subject, replace=False) for _ in range(subjects)])
    return pa.table(
        {
            SUBJECT_DIGEST: pa.array([f"s{u:05d}" for u in who], pa.string()),
            ITEM_ID: pa.array(what, pa.int64()),
            RATING: pa.array(np.clip(np.round(3 + (users[who] * things[what]).sum(1)), 1, 5), pa.float32()),
        }
    )


def test_a_large_catalogue_is_fitted_by_block_lanczos_and_predicts_what_the_full_decomposition_predicts(
    monkeypatch,
) -> None:
    from expunge.shards.models import block_lanczos

    model = ItemStatsModel(ItemStatsConfig(num_items=400, factors=6))
    rows = _latent_rows(0, 2000, 400, 80)
    state = model.accumulate(model.empty(), rows)

    def refuse(matrix: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        raise AssertionError("block Lanczos fell back to dsyevr")

    monkeypatch.setattr(block_lanczos, "top_eigenpairs", refuse)
    fast = model.fit(state)
    assert np.array_equal(fast.predict(rows), model.fit(state).predict(rows))  # the same bits again

    def full(matrix: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        values, vectors = np.linalg.eigh(matrix)
        top = np.argsort(values)[::-1][:count]
        return values[top], vectors[:, top]

    monkeypatch.setattr(item_stats, "_top_eigenpairs", full)
    np.testing.assert_allclose(fast.predict(rows), model.fit(state).predict(rows), rtol=1e-8, atol=1e-8)


def test_the_dense_co_rating_matrices_are_x_transpose_x_and_the_stored_pairs_mirrored() -> None:
    rows = _random_rows(9, 40, 30)
    model = ItemStatsModel(ItemStatsConfig(num_items=30, factors=0))
    state = model.accumulate(model.empty(), rows)
    subjects = sorted(set(rows.column(SUBJECT_DIGEST).to_pylist()))
    rated = np.zeros((len(subjects), 30))
    for digest, item in zip(*(rows.column(c).to_pylist() for c in (SUBJECT_DIGEST, ITEM_ID)), strict=True):
        rated[subjects.index(digest), item] = 1.0
    pairs = item_stats._pair_arrays(state, state.array("item_count").astype(np.float64))
    counts, products = item_stats_dense._dense_pair(pairs)
    np.testing.assert_array_equal(counts, rated.T @ rated)
    upper = np.zeros((30, 30))
    upper.flat[state.array("pair_index")] = state.array("pair_product")
    assert np.array_equal(products, upper + upper.T + np.diag(state.array("item_square")))
