"""The top eigenpairs by block Lanczos: LAPACK's answer, the same bits every time, dsyevr where it cannot (issue 22, ninth pass)."""

from __future__ import annotations

import numpy as np
import pytest

from expunge.shards.models import block_lanczos
from expunge.shards.models.block_lanczos import lanczos_top_eigenpairs
from expunge.shards.models.item_stats import pin_fit_threads
from expunge.shards.models.lapack_nogil import top_eigenpairs


def _with_spectrum(values: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(rng.standard_normal((len(values), len(values))))[0]
    return (rotation * values) @ rotation.T


def _no_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(matrix: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        raise AssertionError("block Lanczos fell back to dsyevr")

    monkeypatch.setattr(block_lanczos, "top_eigenpairs", refuse)


def _assert_top_of_the_full_decomposition(matrix: np.ndarray, values: np.ndarray, vectors: np.ndarray) -> None:
    count = len(values)
    every_value, every_vector = np.linalg.eigh(matrix)
    top = np.argsort(every_value)[::-1][:count]
    scale = np.abs(every_value).max()
    np.testing.assert_allclose(values, every_value[top], rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(count), atol=1e-10)
    low_rank = (vectors * values) @ vectors.T
    expected = (every_vector[:, top] * every_value[top]) @ every_vector[:, top].T
    np.testing.assert_allclose(low_rank, expected, rtol=0, atol=1e-8 * scale)


_TAIL = np.arange(785)


@pytest.mark.parametrize(
    "spectrum",
    [
        # like MovieLens 100K's shrunk covariance: a decaying spectrum, a 7 % gap below the 10th
        pytest.param(np.concatenate([np.linspace(30.0, 5.0, 10), 4.6 * 0.97 ** np.arange(790) - 0.5]), id="covariance"),
        # and five negative eigenvalues up to four times the largest wanted one in magnitude
        pytest.param(
            np.concatenate([np.linspace(30.0, 10.0, 10), 4.0 * 0.97**_TAIL, np.linspace(-60.0, -120.0, 5)]),
            id="indefinite",
        ),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_the_top_of_the_full_decomposition(spectrum, seed, monkeypatch) -> None:
    pin_fit_threads()
    _no_fallback(monkeypatch)
    matrix = _with_spectrum(spectrum, seed)
    values, vectors = lanczos_top_eigenpairs(matrix, 10)
    _assert_top_of_the_full_decomposition(matrix, values, vectors)
    assert np.all(np.diff(values) <= 0)


def test_a_repeated_top_eigenvalue_is_found_as_often_as_it_is_repeated(monkeypatch) -> None:
    pin_fit_threads()
    _no_fallback(monkeypatch)
    spectrum = np.concatenate([[9.0, 9.0, 9.0, 7.0], 6.0 * 0.97 ** np.arange(796)])
    matrix = _with_spectrum(spectrum, 3)
    values, vectors = lanczos_top_eigenpairs(matrix, 4)
    _assert_top_of_the_full_decomposition(matrix, values, vectors)
    np.testing.assert_allclose(values[:3], 9.0, rtol=1e-12)


def test_the_same_matrix_gives_the_same_bits_whatever_ran_before_and_whatever_its_layout() -> None:
    pin_fit_threads()
    matrix = _with_spectrum(np.linspace(10.0, -3.0, 300), 4)
    first = lanczos_top_eigenpairs(matrix, 6)
    lanczos_top_eigenpairs(_with_spectrum(np.linspace(1.0, 0.0, 320), 5), 6)
    lanczos_top_eigenpairs(np.eye(300), 6)
    padding = [np.empty(n) for n in (1, 3, 7)]  # moves where numpy puts the next buffers
    for again in (lanczos_top_eigenpairs(matrix.copy(), 6), lanczos_top_eigenpairs(np.asfortranarray(matrix), 6)):
        assert np.array_equal(first[0], again[0])
        assert np.array_equal(first[1], again[1])
    assert padding


@pytest.mark.parametrize(
    "matrix",
    [
        pytest.param(2.0 * np.eye(300) + 0.5 * np.ones((300, 300)), id="a I + b J"),
        pytest.param(np.eye(300), id="identity"),
        pytest.param(np.zeros((300, 300)), id="zero"),
        pytest.param(np.outer(np.arange(300.0), np.arange(300.0)), id="rank one"),
    ],
)
def test_an_invariant_krylov_space_takes_dsyevr_and_its_bits(matrix) -> None:
    pin_fit_threads()
    values, vectors = lanczos_top_eigenpairs(matrix, 4)
    expected = top_eigenpairs(matrix, 4)
    assert np.array_equal(values, expected[0])
    assert np.array_equal(vectors, expected[1])


def test_no_convergence_within_the_limit_takes_dsyevr_and_its_bits() -> None:
    pin_fit_threads()
    matrix = _with_spectrum(np.linspace(10.0, 9.0, 400), 6)  # the top 10 lie within 0.3 % of each other
    values, vectors = lanczos_top_eigenpairs(matrix, 10, max_dimension=40)
    expected = top_eigenpairs(matrix, 10)
    assert np.array_equal(values, expected[0])
    assert np.array_equal(vectors, expected[1])


def test_small_matrices_take_dsyevr_and_its_bits() -> None:
    matrix = _with_spectrum(np.linspace(5.0, -1.0, 60), 7)
    values, vectors = lanczos_top_eigenpairs(matrix, 3)
    expected = top_eigenpairs(matrix, 3)
    assert np.array_equal(values, expected[0])
    assert np.array_equal(vectors, expected[1])


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="square"):
        lanczos_top_eigenpairs(np.zeros((300, 299)), 1)
    with pytest.raises(ValueError, match="count"):
        lanczos_top_eigenpairs(np.eye(300), 301)
    with pytest.raises(ValueError, match="block"):
        lanczos_top_eigenpairs(np.eye(300), 5, block=4)
    broken = np.eye(300)
    broken[3, 7] = np.nan
    with pytest.raises(np.linalg.LinAlgError, match="NaN"):
        lanczos_top_eigenpairs(broken, 2)


def test_a_flat_spectrum_is_given_up_early_for_dsyevr_and_its_bits(caplog) -> None:
    """No gap below the wanted pairs: the residuals fall too slowly to converge, and the basis stops
    growing long before its limit (300 vectors here), so that such a matrix costs little more than dsyevr."""
    pin_fit_threads()
    noise = np.random.default_rng(8).standard_normal((1400, 1400))
    matrix = (noise + noise.T) / 2
    with caplog.at_level("DEBUG", logger="expunge.shards.models.block_lanczos"):
        values, vectors = lanczos_top_eigenpairs(matrix, 10)
    expected = top_eigenpairs(matrix, 10)
    assert np.array_equal(values, expected[0])
    assert np.array_equal(vectors, expected[1])
    (message,) = [r.getMessage() for r in caplog.records if "dsyevr instead" in r.getMessage()]
    assert int(message.split(" after ")[1].split()[0]) <= 120, message


def test_a_basis_limit_below_one_block_is_refused() -> None:
    with pytest.raises(ValueError, match="max_dimension"):
        lanczos_top_eigenpairs(np.eye(300), 4, max_dimension=3)
