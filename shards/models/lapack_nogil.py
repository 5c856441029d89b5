"""LAPACK's ``dsyevr`` (the top eigenpairs of a symmetric matrix) and Cholesky inverse
(``dpotrf`` + ``dpotri``), called with the GIL released.

``scipy.linalg.eigh(subset_by_index=...)`` computes only the wanted eigenpairs (MRRR, ``dsyevr``),
at about half the CPU of numpy's full ``dsyevd`` on 1,683 items (0.34-0.38 s against 0.65 s, one
BLAS thread), but scipy's f2py wrappers hold the GIL for the whole call, which in the service
stopped the commit worker's Python threads for the length of every solve (docs/performance.md,
"The GIL"). numpy's ``eigh`` releases it but has no subset. So the routine is called here through
``ctypes`` (which releases the GIL around a foreign call) at the address scipy exports for Cython
(``scipy.linalg.cython_lapack``, a stable interface since scipy 0.16): the same LAPACK library
and the same bits as ``scipy.linalg.eigh(..., driver="evr")`` (``tests/shards/test_lapack_nogil.py``).

The Cholesky inverse takes half the CPU of numpy's LU inverse (0.14 s against 0.27 s on 1,683
items); scipy's wrappers of it hold the GIL for about two thirds of the call.

Source: Dhillon, Parlett and Vömel, "The design and implementation of the MRRR algorithm",
ACM TOMS 32(4), 2006 (LAPACK ``dsyevr``).
"""

from __future__ import annotations

import ctypes
import functools
import logging
from typing import Any

import numpy as np

__all__ = ["spd_inverse", "top_eigenpairs"]

log = logging.getLogger(__name__)

_int, _double, _char = ctypes.c_int, ctypes.c_double, ctypes.c_char
_pint, _pdouble, _pchar = ctypes.POINTER(_int), ctypes.POINTER(_double), ctypes.POINTER(_char)


def _ints(array: np.ndarray) -> Any:
    return array.ctypes.data_as(_pint)


def _doubles(array: np.ndarray) -> Any:
    return array.ctypes.data_as(_pdouble)


def _address(name: str) -> int:
    """The address of scipy's Cython-level LAPACK routine ``name`` (LP64 ints; ``scipy.linalg.cython_lapack``)."""
    from scipy.linalg import cython_lapack

    capsule = cython_lapack.__pyx_capi__[name]
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return int(api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule)))


@functools.cache
def _dsyevr() -> Any:
    """``dsyevr`` as a ctypes function, which releases the GIL around the call."""
    # jobz, range, uplo, n, a, lda, vl, vu, il, iu, abstol, m, w, z, ldz, isuppz, work, lwork, iwork, liwork, info
    argtypes: list[Any] = [_pchar] * 3 + [_pint, _pdouble, _pint] + [_pdouble] * 2 + [_pint] * 2 + [_pdouble, _pint]
    argtypes += [_pdouble, _pdouble, _pint, _pint, _pdouble, _pint, _pint, _pint, _pint]
    return ctypes.CFUNCTYPE(None, *argtypes)(_address("dsyevr"))


@functools.cache
def _cholesky_routine(name: str) -> Any:
    """``dpotrf`` or ``dpotri`` (uplo, n, a, lda, info) as a ctypes function, which releases the GIL."""
    return ctypes.CFUNCTYPE(None, _pchar, _pint, _pdouble, _pint, _pint)(_address(name))


def checked_eigen_input(matrix: np.ndarray, count: int, caller: str) -> int:
    """The size n of a square (n, n) ``matrix`` of which ``caller`` finds the top ``count`` eigenpairs.

    Raises:
        ValueError: ``matrix`` is not square, or ``count`` is outside [0, n].
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{caller} needs a square matrix; got shape {matrix.shape}")
    size = int(matrix.shape[0])
    if not 0 <= count <= size:
        raise ValueError(f"count must lie in [0, {size}]; got {count}")
    return size


def refuse_non_finite(matrix: np.ndarray, caller: str) -> None:
    """Raises ``numpy.linalg.LinAlgError`` when ``matrix`` holds a NaN or an infinity."""
    if not np.isfinite(matrix).all():
        raise np.linalg.LinAlgError(f"{caller} needs a finite matrix; it holds a NaN or an infinity")


def top_eigenpairs(matrix: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` largest eigenvalues (descending, shape (count,)) of a symmetric (n, n) float64
    matrix and their unit eigenvectors (n, count), by ``dsyevr`` on the lower triangle.

    Deterministic for a given input and BLAS thread count (``item_stats.FIT_BLAS_THREADS``);
    eigenvector signs are LAPACK's. ``matrix`` is not changed. On clustered eigenvalues (e.g.
    ``a I + b J``) the subset path of ``dsyevr`` can fail or find fewer pairs than asked (scipy's
    ``eigh(driver="evr")`` then raises or returns fewer too); such a matrix takes the full
    decomposition (``numpy.linalg.eigh``, ``dsyevd``) instead: also deterministic, since the same
    input always fails the same way.

    Raises:
        ValueError: ``matrix`` is not square, or ``count`` is outside [0, n].
        numpy.linalg.LinAlgError: ``matrix`` holds a NaN or an infinity.
    """
    size = checked_eigen_input(matrix, count, "top_eigenpairs")
    if count == 0:
        return np.zeros(0), np.zeros((size, 0))
    refuse_non_finite(matrix, "top_eigenpairs")
    # Column-major as LAPACK reads it; a C-ordered symmetric matrix is its own transpose, but a copy
    # is needed anyway (dsyevr overwrites it).
    a = np.array(matrix, dtype=np.float64, order="F", copy=True)
    values = np.zeros(size)
    vectors = np.zeros((count, size))  # C-ordered (count, n) is column-major (n, count)
    support = np.zeros(2 * count, dtype=np.intc)
    found, info = _int(0), _int(0)
    n = _int(size)

    def call(work: np.ndarray, lwork: int, iwork: np.ndarray, liwork: int) -> None:
        _dsyevr()(
            ctypes.byref(_char(b"V")), ctypes.byref(_char(b"I")), ctypes.byref(_char(b"L")),
            ctypes.byref(n), _doubles(a), ctypes.byref(n),
            ctypes.byref(_double(0.0)), ctypes.byref(_double(0.0)),
            ctypes.byref(_int(size - count + 1)), ctypes.byref(_int(size)),
            ctypes.byref(_double(0.0)), ctypes.byref(found), _doubles(values), _doubles(vectors), ctypes.byref(n),
            _ints(support), _doubles(work), ctypes.byref(_int(lwork)), _ints(iwork), ctypes.byref(_int(liwork)),
            ctypes.byref(info),
        )  # fmt: skip

    work, iwork = np.zeros(1), np.zeros(1, dtype=np.intc)
    call(work, -1, iwork, -1)  # workspace query
    if info.value == 0:
        # One spare element before each workspace: when the subset search finds no eigenvalue,
        # LAPACK writes 4 bytes just before IWORK (seen with guard bytes; harmless in a spare).
        work, iwork = np.zeros(int(work[0]) + 1), np.zeros(int(iwork[0]) + 1, dtype=np.intc)
        call(work[1:], len(work) - 1, iwork[1:], len(iwork) - 1)
    if info.value != 0 or found.value != count:
        log.debug(
            "dsyevr: info=%d, %d of %d eigenpairs; the full decomposition instead", info.value, found.value, count
        )
        every_value, every_vector = np.linalg.eigh(matrix)
        order = np.argsort(every_value, kind="stable")[::-1][:count]
        return every_value[order], every_vector[:, order]
    return values[:count][::-1].copy(), np.ascontiguousarray(vectors.T[:, ::-1])


def spd_inverse(matrix: np.ndarray, *, overwrite: bool = False) -> np.ndarray:
    """The inverse (n, n), C-contiguous, of a symmetric positive definite (n, n) matrix, by
    Cholesky (``dpotrf`` then ``dpotri`` on one triangle, mirrored), with the GIL released.

    Half the floating-point work of an LU inverse (``numpy.linalg.inv``: n^3 against 2 n^3).
    Deterministic for a given input and BLAS thread count. ``matrix`` is not changed, unless
    ``overwrite`` and it is a C-contiguous float64 array: then the inverse is computed in its
    memory and returned (no copy of 23 MB on MovieLens 100K); it must then be exactly symmetric,
    since its upper triangle is read where a copy would have its lower one read, and after a
    ``LinAlgError`` it holds LAPACK's partial factors.

    Raises:
        ValueError: ``matrix`` is not square.
        numpy.linalg.LinAlgError: ``matrix`` is not positive definite (e.g. singular), or not finite.
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"spd_inverse needs a square matrix; got shape {matrix.shape}")
    size = int(matrix.shape[0])
    refuse_non_finite(matrix, "spd_inverse")
    in_place = overwrite and matrix.dtype == np.float64 and matrix.flags.c_contiguous and matrix.flags.writeable
    # Column-major as LAPACK reads it: the transpose of a C-ordered matrix, itself when symmetric.
    a = matrix.T if in_place else np.array(matrix, dtype=np.float64, order="F", copy=True)
    if size == 0:
        return np.ascontiguousarray(a)
    n, info = _int(size), _int(0)
    for step in ("dpotrf", "dpotri"):
        _cholesky_routine(step)(
            ctypes.byref(_char(b"L")), ctypes.byref(n), _doubles(a), ctypes.byref(n), ctypes.byref(info)
        )
        if info.value != 0:
            raise np.linalg.LinAlgError(
                f"the matrix is not positive definite ({step} info={info.value}): singular (e.g. an item nobody "
                "rated with no penalty) or indefinite"
            )
    square = a.T  # C-contiguous; LAPACK's lower triangle is its upper one
    _mirror_upper(square)
    return square


def _mirror_upper(square: np.ndarray, step: int = 256) -> None:
    """Copy the strict upper triangle of a C-contiguous (n, n) array onto its lower one, in place,
    by blocks of ``step`` columns (a transposed copy per block, no n x n temporary)."""
    size = len(square)
    for start in range(0, size, step):
        stop = min(start + step, size)
        block = square[start:stop, start:stop]
        lower = np.tril_indices(stop - start, -1)
        block[lower] = block.T[lower]
        if stop < size:
            square[stop:, start:stop] = square[start:stop, stop:].T
