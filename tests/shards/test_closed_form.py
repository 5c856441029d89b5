"""Closed-form rankers (EASE, DLAE, EDLAE): the formulas, determinism, and exactness after an erasure."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pydantic import ValidationError

from expunge.shards.config import ItemStatsConfig
from expunge.shards.models import ItemStatsModel, item_stats, item_stats_dense
from expunge.shards.models.closed_form import dlae, dropout_penalty, ease, edlae
from expunge.shards.models.item_stats import ItemStatsState
from expunge.shards.rows import ITEM_ID, RATING, SUBJECT_DIGEST

ITEMS = 30


def _gram(seed: int, users: int = 50, items: int = 12, density: float = 0.3) -> np.ndarray:
    """``X^T X`` of a random binary users x items matrix, one item nobody chose (a zero row and column)."""
    rows = (np.random.default_rng(seed).random((users, items)) < density).astype(np.float64)
    rows[:, -1] = 0.0
    return rows.T @ rows


def _column_by_column(gram: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """Zero-diagonal weights solved one column at a time: ridge of item j on the other items.

    Column j minimises ``||X_j - X_{-j} b||^2 + sum_k penalty_k b_k^2``, i.e.
    ``b = (G_{-j,-j} + diag(penalty_{-j}))^-1 G_{-j,j}``: the diagonal constraint by deletion,
    no Lagrange multiplier, so an independent route to EASE / EDLAE.
    """
    size = len(gram)
    weights = np.zeros_like(gram)
    for j in range(size):
        others = np.arange(size) != j
        system = gram[np.ix_(others, others)] + np.diag(penalty[others])
        weights[others, j] = np.linalg.solve(system, gram[others, j])
    return weights


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ease_is_a_ridge_regression_of_each_item_on_the_others(seed):
    gram = _gram(seed)
    reference = _column_by_column(gram, np.full(len(gram), 7.0))
    np.testing.assert_allclose(ease(gram, 7.0), reference, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("seed", "dropout", "l2"), [(0, 0.25, 1.0), (1, 0.5, 10.0), (2, 0.9, 0.5)])
def test_edlae_is_ease_with_the_dropout_penalty(seed, dropout, l2):
    gram = _gram(seed)
    penalty = dropout / (1 - dropout) * np.diag(gram) + l2
    np.testing.assert_allclose(dropout_penalty(gram, dropout, l2), penalty, rtol=1e-15)
    np.testing.assert_allclose(edlae(gram, dropout, l2), _column_by_column(gram, penalty), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("seed", "dropout", "l2"), [(0, 0.25, 1.0), (1, 0.5, 10.0), (2, 0.9, 0.5)])
def test_dlae_is_the_unconstrained_solution(seed, dropout, l2):
    gram = _gram(seed)
    penalty = np.diag(dropout / (1 - dropout) * np.diag(gram) + l2)
    weights = dlae(gram, dropout, l2)
    np.testing.assert_allclose(weights, np.linalg.solve(gram + penalty, gram), rtol=1e-9, atol=1e-12)
    # Stationary point of ||X - XB||^2 + ||Lambda^(1/2) B||^2: G B + Lambda B = G.
    np.testing.assert_allclose((gram + penalty) @ weights, gram, atol=1e-9)
    assert np.abs(np.diag(weights)).max() > 0.01  # unlike EDLAE, the diagonal is free


def test_the_zero_diagonal_solutions_have_an_exactly_zero_diagonal_and_differ():
    gram = _gram(3, items=20)
    for weights in (ease(gram, 5.0), edlae(gram, 0.5, 5.0)):
        assert np.all(np.diag(weights) == 0.0)
    # The dropout penalty is not EASE's: popular items are regularised more.
    assert not np.allclose(ease(gram, 5.0), edlae(gram, 0.5, 5.0))


@pytest.mark.parametrize("solve", [lambda g: ease(g, 3.0), lambda g: edlae(g, 0.4, 3.0), lambda g: dlae(g, 0.4, 3.0)])
def test_the_same_gram_gives_the_same_bits(solve):
    gram = _gram(4, users=200, items=60)
    first, second = solve(gram), solve(gram.copy())
    assert first.dtype == np.float64
    assert first.tobytes() == second.tobytes()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: edlae(np.eye(3), 0.0, 1.0), "dropout"),
        (lambda: dlae(np.eye(3), 1.0, 1.0), "dropout"),
        (lambda: edlae(np.eye(3), 0.5, -1.0), "l2"),
        (lambda: ease(np.ones((2, 3)), 1.0), "square"),
    ],
)
def test_invalid_inputs_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    "settings", [{"ranker": "svd"}, {"ranking_dropout": 0.0}, {"ranking_dropout": 1.0}, {"ranking_dropout_l2": 0.0}]
)
def test_the_config_refuses_an_unknown_ranker_and_an_out_of_range_dropout(settings):
    with pytest.raises(ValidationError):
        ItemStatsConfig(**settings)


# ----- through the item_stats model ----------------------------------------------------------


def _ratings(seed: int, subjects: int = 40, per_subject: int = 9) -> pa.Table:
    generator = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, ITEMS + 1)  # skewed, as real catalogues are
    digests, items, ratings = [], [], []
    for subject in range(subjects):
        chosen = generator.choice(ITEMS, size=per_subject, replace=False, p=popularity / popularity.sum())
        digests += [f"{subject:04d}-digest"] * per_subject
        items += chosen.tolist()
        ratings += generator.integers(1, 6, size=per_subject).astype(float).tolist()
    return pa.table({SUBJECT_DIGEST: digests, ITEM_ID: pa.array(items, pa.int64()), RATING: ratings})


def _config(ranker: str) -> ItemStatsConfig:
    return ItemStatsConfig(num_items=ITEMS, factors=2, neighbours=5, ranker=ranker, ranking_l2=20.0,
                           ranking_dropout=0.5, ranking_dropout_l2=5.0)  # fmt: skip


def _rows_of(rows: pa.Table, digests: set[str]) -> pa.Table:
    return rows.filter(pc.is_in(rows.column(SUBJECT_DIGEST), pa.array(sorted(digests))))


def _rows_without(rows: pa.Table, digests: set[str]) -> pa.Table:
    return rows.filter(pc.invert(pc.is_in(rows.column(SUBJECT_DIGEST), pa.array(sorted(digests)))))


def test_item_stats_ranks_with_the_configured_solve():
    rows = _ratings(5)
    model = ItemStatsModel(_config("edlae"))
    state = model.contribution(rows)
    assert isinstance(state, ItemStatsState)
    counts, _ = item_stats_dense._dense_pair(
        item_stats._pair_arrays(state, state.array("item_count").astype(np.float64))
    )
    fits = {ranker: ItemStatsModel(_config(ranker)).fit(state) for ranker in ("ease", "edlae", "dlae")}
    assert fits["edlae"].ranking.tobytes() == edlae(counts, 0.5, 5.0).tobytes()
    assert fits["dlae"].ranking.tobytes() == dlae(counts, 0.5, 5.0).tobytes()
    assert fits["ease"].ranking.tobytes() == ease(counts, 20.0).tobytes()
    assert not np.array_equal(fits["ease"].ranking, fits["edlae"].ranking)
    # The ranker changes the top-N only: rating predictions are the same bits.
    predictions = {ranker: fit.predict(rows).tobytes() for ranker, fit in fits.items()}
    assert len(set(predictions.values())) == 1


def test_changing_only_the_ranker_leaves_the_statistics_untouched():
    rows = _ratings(6)
    ease_state = ItemStatsModel(_config("ease")).contribution(rows)
    edlae_state = ItemStatsModel(_config("edlae")).contribution(rows)
    assert ease_state.subjects == edlae_state.subjects
    for name, tensor in ease_state.state_dict().items():
        assert tensor.numpy().tobytes() == edlae_state.state_dict()[name].numpy().tobytes(), name


@pytest.mark.parametrize("ranker", ["edlae", "dlae"])
def test_after_an_erasure_the_ranking_is_the_one_from_scratch_bit_for_bit(ranker):
    rows = _ratings(7)
    model = ItemStatsModel(_config(ranker))
    digests = sorted(set(rows.column(SUBJECT_DIGEST).to_pylist()))
    shards = [set(digests[0::3]), set(digests[1::3]), set(digests[2::3])]
    summed = model.combine([model.contribution(_rows_of(rows, shard)) for shard in shards])
    erased = {digests[4], digests[17]}
    after = model.fit(model.subtract(summed, model.contribution(_rows_of(rows, erased))))
    scratch = model.fit(model.contribution(_rows_without(rows, erased)))
    before = model.fit(summed)
    assert after.ranking.tobytes() == scratch.ranking.tobytes()
    assert not np.array_equal(after.ranking, before.ranking)  # the erased subjects did count
    for digest in sorted(set(digests) - erased):
        assert after.ranking_scores(digest).tobytes() == scratch.ranking_scores(digest).tobytes()
        assert after.recommend(digest, 5) == scratch.recommend(digest, 5)
    assert not any(after.knows(digest) for digest in erased)


def test_no_items_give_an_empty_ranker() -> None:
    # Review: the Cholesky inverse called a 0 x 0 matrix singular (LAPACK: an illegal argument).
    empty = np.zeros((0, 0))
    assert ease(empty, 1.0).shape == (0, 0)
    assert edlae(empty, 0.5, 1.0).shape == (0, 0)
    assert dlae(empty, 0.5, 1.0).shape == (0, 0)
