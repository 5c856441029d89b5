"""The top eigenpairs of a large symmetric matrix by block Lanczos from a fixed start block.

The ``item_stats`` fit needs only the ``factors`` (default 10) largest eigenpairs of the
items x items covariance. LAPACK's ``dsyevr`` first reduces the whole matrix to tridiagonal
form (``4/3 n^3`` flops, half of it matrix-vector work bound by memory): 0.32 s of CPU on
MovieLens 100K's 1,683 items, 60 % of the fit. A block Krylov method touches the matrix only
through products ``A Q`` with an ``n x b`` block (``2 n^2 b`` flops, matrix-matrix work) and
stops when the wanted Ritz pairs are converged: 20 blocks of 10 on that covariance, 0.065 s,
with eigenvalues within 1e-15 and the rank-``count`` part ``V diag(values) V^T`` within 1.3e-10
(relative) of LAPACK's (docs/performance.md, "ninth pass" and "tenth pass").

Algorithm: block Lanczos with full reorthogonalisation (classical Gram-Schmidt, twice), and the
Rayleigh-Ritz projection ``T = V^T A V`` formed from the stored products, so that the Ritz pairs
and their residuals ``||A x - theta x||`` are exact for the basis, not the recurrence's estimates.

**Accepted by residual.** Every wanted pair's residual is at most ``RESIDUAL_TOLERANCE`` times
``||A||_2`` (the largest Ritz value in magnitude), not times the pair's own eigenvalue: on a
matrix whose negative eigenvalues dwarf the wanted ones a pair's own relative residual can be
larger (1.2e-7 with a top of 3 and a bottom of -600). A small residual shows that each pair is an
eigenpair, not that none above it was missed: an eigenvector exactly orthogonal to every Krylov
block is never seen. The start block is Gaussian, so a matrix would have to be built against this
seed for that; the covariances of rating data are not (no cheap check certifies the count: an
``LDL^T`` inertia count costs a quarter of ``dsyevr``'s reduction).
Sources: Golub and Underwood, "The block Lanczos method for computing eigenvalues", Mathematical
Software III, 1977; Golub and Van Loan, *Matrix Computations*, 4th ed., section 10.3.6.

**Deterministic.** The start block is fixed (``numpy.random.RandomState``, whose stream numpy
keeps stable across releases, with a fixed seed), every step is the same sequence of BLAS and
LAPACK calls, and the stopping rule reads only the computed residuals: the same matrix and BLAS
thread count give the same bits, whatever ran before (no restart from a fresh random vector,
which made ARPACK's answers depend on the calls made before it). With a block at least as wide as
``count``, an eigenvalue repeated up to the block's width is found as often as it is repeated.

**Falls back** to ``lapack_nogil.top_eigenpairs`` (``dsyevr``) when the matrix is small (fewer
than ``max(256, 8 x block)`` rows: the reduction is cheap there), when the Krylov space becomes invariant (the next block is numerically
dependent on the basis: ``a I + b J``, the identity, a matrix of low rank), or when the Ritz pairs
do not converge within ``max_dimension`` basis vectors. Both are deterministic, and the same input
always takes the same path.

Every product runs in numpy's BLAS and LAPACK, which release the GIL (the service's commit worker
keeps running beside a fit, docs/performance.md "The GIL").
"""

from __future__ import annotations

import logging

import numpy as np

from expunge.shards.models.lapack_nogil import checked_eigen_input, refuse_non_finite, top_eigenpairs

__all__ = ["RESIDUAL_TOLERANCE", "lanczos_top_eigenpairs"]

log = logging.getLogger(__name__)

#: Ritz pairs are accepted when every residual ``||A x - theta x||`` is at most this times the
#: largest Ritz value's magnitude (an estimate of ``||A||_2``).
RESIDUAL_TOLERANCE = 1e-9
#: Matrices with fewer rows than this take ``dsyevr`` directly.
SMALLEST_SIZE = 256
#: A new block whose orthogonalised columns shrink below this fraction of their length before
#: orthogonalisation is numerically inside the basis: the space is invariant (breakdown).
_BREAKDOWN = 1e-8
_SEED = 20201207
_CHECK_EVERY = 4  # blocks between convergence checks (each costs an eigh of the projection)


def _start_block(size: int, width: int) -> np.ndarray:
    """A fixed orthonormal (size, width) block: Gaussian entries from a seeded ``RandomState``."""
    gaussian = np.random.RandomState(_SEED).standard_normal((size, width))
    return np.linalg.qr(gaussian)[0]


def lanczos_top_eigenpairs(
    matrix: np.ndarray, count: int, *, block: int | None = None, max_dimension: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` largest eigenvalues (descending, shape (count,)) of a symmetric (n, n) float64
    matrix and their unit eigenvectors (n, count).

    ``block``: the Krylov block width, at least ``count`` (default ``max(count, 4)``).
    ``max_dimension``: the most basis vectors before the fallback (default
    ``min(n // 4, 30 * block)``: 300 for the default 10 factors, where MovieLens 100K's
    covariance converges at 200; a flat spectrum is given up after at most 120 vectors, about 0.1 s
    more than ``dsyevr`` alone on 1,683 items, and a slowly converging one at the limit, about
    0.2 s more). ``count == 0`` returns empty arrays without reading ``matrix``. Eigenvector signs are arbitrary (the low-rank predictor uses
    only ``V diag(values) V^T``). ``matrix`` must be symmetric (the whole of it is read) and is
    not changed.

    Raises:
        ValueError: ``matrix`` is not square, ``count`` is outside [0, n], ``block < count``, or
            ``max_dimension < block``.
        numpy.linalg.LinAlgError: ``matrix`` holds a NaN or an infinity.
    """
    size = checked_eigen_input(matrix, count, "lanczos_top_eigenpairs")
    width = max(count, 4) if block is None else block
    if width < count:
        raise ValueError(f"block must be at least count ({count}); got {width}")
    if max_dimension is not None and max_dimension < width:
        raise ValueError(f"max_dimension must be at least the block ({width}); got {max_dimension}")
    if count == 0 or size < max(SMALLEST_SIZE, 8 * width):
        return top_eigenpairs(matrix, count)
    refuse_non_finite(matrix, "lanczos_top_eigenpairs")
    # One layout for every caller: a transposed operand could take other BLAS kernels, other bits.
    found = _block_lanczos(np.ascontiguousarray(matrix, dtype=np.float64), count, width, max_dimension)
    if found is None:
        return top_eigenpairs(matrix, count)
    return found


def _block_lanczos(
    matrix: np.ndarray, count: int, width: int, max_dimension: int | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """The converged top ``count`` Ritz pairs, or None (breakdown, or no convergence in the limit)."""
    size = matrix.shape[0]
    limit = min(size // 4, 30 * width) if max_dimension is None else min(max_dimension, size)
    limit -= limit % width
    # Column-major: each block's columns, and every leading part of the basis, are contiguous.
    basis = np.empty((size, limit), order="F")  # V: orthonormal columns
    images = np.empty((size, limit), order="F")  # A V
    projection = np.empty((limit, limit))  # V^T A V
    block = _start_block(size, width)
    dimension, steps, previous = 0, 0, None
    while True:
        end = dimension + width
        basis[:, dimension:end] = block
        # A B as (B^T A)^T, A being symmetric: OpenBLAS's kernel for that operand order streams the
        # (n, n) matrix 1.6x faster than for ``matrix @ block`` (1.7 against 2.7 ms per product
        # on 1,683 items), the cost of each step.
        image = (block.T @ matrix).T
        images[:, dimension:end] = image
        projection[:end, dimension:end] = basis[:, :end].T @ image
        projection[dimension:end, :dimension] = projection[:dimension, dimension:end].T
        dimension, steps = end, steps + 1
        last = dimension + width > limit
        if (dimension >= 4 * count and steps % _CHECK_EVERY == 0) or last:
            residual, pairs = _ritz(
                basis[:, :dimension], images[:, :dimension], projection[:dimension, :dimension], count
            )
            if pairs is not None:
                return pairs
            if last or _hopeless(previous, residual, dimension, limit, _CHECK_EVERY * width):
                log.debug("block Lanczos: residual %.1e after %d vectors; dsyevr instead", residual, dimension)
                return None
            previous = residual
        following = _next_block(basis[:, :dimension], image)
        if following is None:
            log.debug("block Lanczos: invariant subspace after %d vectors; dsyevr instead", dimension)
            return None
        block = following


def _hopeless(previous: float | None, residual: float, dimension: int, limit: int, per_check: int) -> bool:
    """Whether, at the rate of the last two checks, convergence would need over three times ``limit`` vectors.

    A flat spectrum (no gap below the wanted pairs) converges slowly from the start; this stops it
    after two or three checks instead of at ``limit``. Three times, because Krylov convergence
    speeds up as the wanted pairs separate (MovieLens 100K's residuals fall 7x, then 90x, 400x,
    700x per check of 40 vectors).
    """
    if previous is None or previous <= 0.0:
        return False
    rate = residual / previous
    if rate >= 1.0:
        return True
    checks = np.log(RESIDUAL_TOLERANCE / residual) / np.log(rate)
    return dimension + checks * per_check > 3 * limit


def _next_block(basis: np.ndarray, image: np.ndarray) -> np.ndarray | None:
    """``image`` orthogonalised against ``basis`` (twice) and orthonormalised; None on breakdown."""
    lengths = np.linalg.norm(image, axis=0)
    rest = image - basis @ (basis.T @ image)
    rest -= basis @ (basis.T @ rest)
    block, triangle = np.linalg.qr(rest)
    if np.abs(np.diag(triangle)).min() <= _BREAKDOWN * max(float(lengths.max()), np.finfo(float).tiny):
        return None
    return block


def _ritz(
    basis: np.ndarray, images: np.ndarray, projection: np.ndarray, count: int
) -> tuple[float, tuple[np.ndarray, np.ndarray] | None]:
    """The largest relative residual of the top ``count`` Ritz pairs, and the pairs if it is within tolerance."""
    values, vectors = np.linalg.eigh((projection + projection.T) / 2)
    top = np.arange(len(values) - 1, len(values) - 1 - count, -1)
    chosen = vectors[:, top]
    ritz = basis @ chosen
    residual = images @ chosen - ritz * values[top]
    scale = float(np.abs(values).max())
    if scale == 0.0:
        return float("inf"), None
    worst = float(np.linalg.norm(residual, axis=0).max()) / scale
    return worst, ((values[top].copy(), ritz) if worst <= RESIDUAL_TOLERANCE else None)
