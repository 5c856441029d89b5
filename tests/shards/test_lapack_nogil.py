"""The top eigenpairs through LAPACK's dsyevr with the GIL released (issue 22, sixth pass)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import scipy.linalg
import scipy.linalg.lapack
from hypothesis import given, settings
from hypothesis import strategies as st

from expunge.shards.models import lapack_nogil
from expunge.shards.models.item_stats import pin_fit_threads
from expunge.shards.models.lapack_nogil import spd_inverse, top_eigenpairs


def _symmetric(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    half = rng.standard_normal((size, max(1, size // 2)))
    return half @ half.T + np.diag(rng.random(size))


@settings(max_examples=25, deadline=None)
@given(size=st.integers(1, 40), seed=st.integers(0, 10_000), data=st.data())
def test_the_same_bits_as_scipys_dsyevr_and_the_top_of_the_full_decomposition(size, seed, data):
    pin_fit_threads()
    count = data.draw(st.integers(0, size))
    matrix = _symmetric(size, seed)
    before = matrix.copy()
    values, vectors = top_eigenpairs(matrix, count)
    assert np.array_equal(matrix, before)  # not overwritten
    assert values.shape == (count,)
    assert vectors.shape == (size, count)
    if count:
        low, high = size - count, size - 1
        expected_values, expected_vectors = scipy.linalg.eigh(matrix, subset_by_index=[low, high], driver="evr")
        assert np.array_equal(values, expected_values[::-1])  # bit for bit, descending
        assert np.array_equal(vectors, expected_vectors[:, ::-1])
        full = np.linalg.eigh(matrix)[0][::-1][:count]
        assert np.allclose(values, full, rtol=1e-10, atol=1e-10)
        assert np.allclose(matrix @ vectors, vectors * values, atol=1e-8 * max(1.0, abs(values).max()))
    again = top_eigenpairs(matrix, count)
    assert np.array_equal(again[0], values)
    assert np.array_equal(again[1], vectors)


def test_bad_input_is_refused_and_lapack_failures_are_typed():
    with pytest.raises(ValueError, match="square"):
        top_eigenpairs(np.zeros((3, 2)), 1)
    with pytest.raises(ValueError, match=r"count must lie in \[0, 3\]"):
        top_eigenpairs(np.eye(3), 4)
    for size in (1, 2, 4, 9):  # dsyevr itself returned NaN pairs for n <= 2 (review)
        for bad in (np.nan, np.inf, -np.inf):
            broken = np.eye(size)
            broken[0, 0] = bad
            with pytest.raises(np.linalg.LinAlgError, match="finite"):
                top_eigenpairs(broken, 1)


@pytest.mark.parametrize(
    ("size", "count", "a", "b"), [(17, 16, 0.001, 2.3), (18, 4, 1.0, 1.0), (29, 8, 0.001, 2.3), (45, 4, 3.7, 0.0001)]
)
def test_clustered_eigenvalues_take_the_full_decomposition_instead_of_failing(size, count, a, b):
    """a I + b J (one eigenvalue a + n b, n - 1 copies of a): dsyevr failed or found too few pairs (review)."""
    pin_fit_threads()
    matrix = a * np.eye(size) + b * np.ones((size, size))
    values, vectors = top_eigenpairs(matrix, count)
    expected_values, expected_vectors = np.linalg.eigh(matrix)
    order = np.argsort(expected_values, kind="stable")[::-1][:count]
    assert np.array_equal(values, expected_values[order])
    assert np.array_equal(vectors, expected_vectors[:, order])
    assert values[0] == pytest.approx(a + b * size)
    again = top_eigenpairs(matrix, count)
    assert np.array_equal(again[1], vectors)


def _spins_per_second_during(solve) -> float:
    """How fast another Python thread counts while ``solve`` runs (it counts only while it holds the GIL)."""
    ticks = [0]
    done = threading.Event()

    def spin() -> None:
        while not done.is_set():
            ticks[0] += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        while ticks[0] == 0:
            time.sleep(0.001)
        before, began = ticks[0], time.perf_counter()
        for _ in range(2):
            solve()
        return (ticks[0] - before) / (time.perf_counter() - began)
    finally:
        done.set()
        spinner.join()


def test_other_python_threads_run_while_it_solves():
    """scipy's subset solver holds the GIL for the whole call; this one must not (the service's commit worker).

    Compared side by side on the same matrix, not against a time: with the GIL held, the counting
    thread runs only at the interpreter's switch interval (a tenth of its speed or less at this size).
    """
    pin_fit_threads()
    size = 1400  # long enough that scipy's Python-level checks around the call do not dominate
    matrix = _symmetric(size, 1)
    released = _spins_per_second_during(lambda: top_eigenpairs(matrix, 5))
    held = _spins_per_second_during(lambda: scipy.linalg.eigh(matrix, subset_by_index=[size - 5, size - 1]))
    assert released > 3 * held


class _Guarded:
    """numpy, except that ``zeros`` puts guard bytes on both sides of every buffer it hands out."""

    GUARD = 64

    def __init__(self) -> None:
        self.buffers: list[np.ndarray] = []

    def __getattr__(self, name: str) -> object:
        return getattr(np, name)

    def zeros(self, shape, dtype=np.float64, order="C"):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        kind = np.dtype(dtype)
        size = int(np.prod(shape)) * kind.itemsize
        raw = np.full(size + 2 * self.GUARD, 0xA5, dtype=np.uint8)
        body = raw[self.GUARD : self.GUARD + size].view(kind)
        body[:] = 0
        self.buffers.append(raw)
        return body.reshape(shape, order=order)

    def untouched(self) -> bool:
        return all((b[: self.GUARD] == 0xA5).all() and (b[-self.GUARD :] == 0xA5).all() for b in self.buffers)


def test_lapack_writes_nothing_outside_the_buffers_it_is_given(monkeypatch):
    """A near-identity matrix whose subset search finds no eigenvalue: dsyevr wrote 4 bytes before IWORK (review)."""
    pin_fit_threads()
    rng = np.random.default_rng(38)
    noise = rng.standard_normal((8, 8)) * 1e-15
    matrix = (np.eye(8) + (noise + noise.T) / 2).astype(np.float32)
    guarded = _Guarded()
    monkeypatch.setattr(lapack_nogil, "np", guarded)
    values, _ = top_eigenpairs(matrix, 1)
    assert guarded.buffers
    assert guarded.untouched()
    assert values == pytest.approx([1.0])


def _scipy_cholesky_inverse(matrix: np.ndarray) -> np.ndarray:
    factor, _ = scipy.linalg.lapack.dpotrf(matrix, lower=1)
    inverse, _ = scipy.linalg.lapack.dpotri(factor, lower=1)
    lower = np.tril(inverse)
    return lower + np.tril(lower, -1).T


@settings(max_examples=25, deadline=None)
@given(size=st.integers(1, 40), seed=st.integers(0, 10_000))
def test_the_cholesky_inverse_has_scipys_bits_and_inverts(size, seed):
    pin_fit_threads()
    matrix = _symmetric(size, seed) + np.eye(size)
    before = matrix.copy()
    inverse = spd_inverse(matrix)
    assert np.array_equal(matrix, before)
    assert np.array_equal(inverse, _scipy_cholesky_inverse(matrix))
    assert np.array_equal(inverse, inverse.T)
    assert np.allclose(matrix @ inverse, np.eye(size), atol=1e-8)
    assert np.array_equal(spd_inverse(matrix), inverse)


def test_the_cholesky_inverse_refuses_what_has_none():
    with pytest.raises(ValueError, match="square"):
        spd_inverse(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="square"):
        spd_inverse(np.float64(2.0))  # a 0-d array: IndexError before
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        spd_inverse(np.diag([1.0, 0.0, 2.0]))  # an item nobody rated, no penalty
    with pytest.raises(np.linalg.LinAlgError, match="finite"):
        spd_inverse(np.diag([1.0, np.nan]))
    assert spd_inverse(np.zeros((0, 0))).shape == (0, 0)


def test_other_python_threads_run_while_it_inverts():
    """Against a call that holds the GIL (scipy's subset eigensolver; its dpotrf/dpotri hold it for about 2/3)."""
    pin_fit_threads()
    matrix = _symmetric(1400, 2) + np.eye(1400)
    released = _spins_per_second_during(lambda: spd_inverse(matrix))
    held = _spins_per_second_during(lambda: scipy.linalg.eigh(matrix, subset_by_index=[1395, 1399]))
    assert released > 3 * held


@pytest.mark.parametrize("size", [5, 256, 600])  # within one block of the mirror, exactly one, across three
def test_the_inverse_in_place_is_the_inverse_of_a_copy_and_exactly_symmetric(size):
    pin_fit_threads()
    matrix = _symmetric(size, 11) + size * np.eye(size)
    kept = matrix.copy()
    inverse = spd_inverse(matrix)
    assert np.array_equal(matrix, kept)  # not changed without overwrite
    in_place = spd_inverse(matrix, overwrite=True)
    assert np.shares_memory(in_place, matrix)
    assert in_place.flags.c_contiguous
    assert np.array_equal(in_place, inverse)
    assert np.array_equal(in_place, in_place.T)
    np.testing.assert_allclose(in_place @ kept, np.eye(size), atol=1e-9)
