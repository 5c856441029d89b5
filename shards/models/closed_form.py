"""Closed-form item-item rankers solved from one dense Gram matrix: EASE, DLAE and EDLAE.

Each function maps the item-item Gram matrix ``G = X^T X`` of a users x items matrix ``X``
(for ``item_stats``: the co-rating counts, items on the diagonal) to a weight matrix ``B``,
shape (I, I); a user's scores are ``x_u B`` (``x_u`` the user's row of ``X``). Everything is
float64 and computed by one fixed sequence of numpy/LAPACK calls, so the same ``G`` gives
the same bits in the same process: a ranker derived from statistics that erasure subtracts
exactly is itself exact after the erasure. ``P`` is inverted by Cholesky (``dpotrf`` + ``dpotri``,
``lapack_nogil.spd_inverse``): half the CPU of ``numpy.linalg.inv``'s LU (0.14 s against 0.27 s
on 1,683 items, one BLAS thread), called with the GIL released, since in the service a fit runs
beside the commit worker's Python threads (scipy's own ``dpotrf``/``dpotri`` wrappers hold the GIL
for about two thirds of the call: docs/performance.md, "The GIL").

Sources:

- EASE: Steck, "Embarrassingly shallow autoencoders for sparse data", WWW 2019, eq. 8:
  ``B = I - P diag(1 / diag P)``, ``P = (G + l2 I)^-1``, which makes ``diag(B) = 0``.
- DLAE and EDLAE: Steck, "Autoencoders that don't overfit towards the identity", NeurIPS
  2020, section 3. Training a linear autoencoder with input dropout of probability ``p``
  is, in expectation, least squares with the diagonal penalty
  ``Lambda = p / (1 - p) diag(diag G)`` (plus an optional L2 ``l2 I``). DLAE is the
  unconstrained solution ``B = (G + Lambda)^-1 G = I - P Lambda``, ``P = (G + Lambda)^-1``.
  EDLAE, the full-rank model with full emphasis on the dropped-out items, is the same
  problem constrained to ``diag(B) = 0``: EASE's solution with ``Lambda`` in place of
  ``l2 I``, ``B = I - P diag(1 / diag P)``. The paper reports both ahead of EASE on
  MovieLens 20M, Netflix and MSD.
"""

from __future__ import annotations

import numpy as np

from expunge.shards.models.lapack_nogil import spd_inverse

__all__ = ["dlae", "dropout_penalty", "ease", "edlae"]


def _checked(gram: np.ndarray) -> np.ndarray:
    matrix = np.asarray(gram, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"the Gram matrix must be square (items x items); got shape {matrix.shape}")
    return matrix


def _zero_diagonal_solution(inverse: np.ndarray) -> np.ndarray:
    """``I - P diag(1 / diag P)``: column j of ``-P`` over ``P_jj``, with the diagonal set to exactly 0.

    Computed in ``inverse``'s memory, which is returned.
    """
    diagonal = np.diag(inverse).copy()
    weights = np.negative(inverse, out=inverse)
    np.divide(weights, diagonal[None, :], out=weights)
    np.fill_diagonal(weights, 0.0)
    return weights


def _shifted_inverse(gram: np.ndarray, shift: float | np.ndarray) -> np.ndarray:
    """``(G + diag(shift))^-1`` of a symmetric (I, I) Gram matrix, ``shift`` a scalar or (I,)
    (Cholesky, GIL released), in one I x I buffer: the sum is formed in a copy that LAPACK inverts in place.

    Raises:
        numpy.linalg.LinAlgError: the matrix is singular (an empty item with no penalty).
    """
    shifted = np.array(gram, dtype=np.float64, order="C", copy=True)
    shifted[np.diag_indices(len(shifted))] += shift
    return spd_inverse(shifted, overwrite=True)


def dropout_penalty(gram: np.ndarray, dropout: float, l2: float) -> np.ndarray:
    """The diagonal ``p / (1 - p) * G_ii + l2`` of DLAE's and EDLAE's penalty, shape (I,).

    Raises:
        ValueError: ``dropout`` outside (0, 1), ``l2`` negative, or ``gram`` not square.
    """
    matrix = _checked(gram)
    if not 0.0 < dropout < 1.0:
        raise ValueError(f"dropout must lie strictly between 0 and 1; got {dropout}")
    if l2 < 0.0:
        raise ValueError(f"l2 must be >= 0; got {l2}")
    return np.asarray(dropout / (1.0 - dropout) * np.diag(matrix) + l2, dtype=np.float64)


def ease(gram: np.ndarray, l2: float) -> np.ndarray:
    """EASE weights ``B = I - P diag(1/diag P)``, ``P = (G + l2 I)^-1``; shape (I, I), ``diag(B) = 0``.

    ``gram``: (I, I), symmetric positive semi-definite; ``l2 > 0`` makes ``G + l2 I``
    invertible even for items nobody rated.

    Raises:
        ValueError: ``gram`` not square.
        numpy.linalg.LinAlgError: ``G + l2 I`` is singular (``l2 <= 0`` with an empty item).
    """
    matrix = _checked(gram)
    return _zero_diagonal_solution(_shifted_inverse(matrix, l2))


def dlae(gram: np.ndarray, dropout: float, l2: float) -> np.ndarray:
    """DLAE weights ``B = (G + Lambda)^-1 G = I - P Lambda``, ``Lambda = diag(dropout_penalty)``; shape (I, I).

    The diagonal of ``B`` is not 0 (it only scores items the user already has, which a
    top-N list leaves out).

    Raises:
        ValueError: as ``dropout_penalty``.
        numpy.linalg.LinAlgError: ``G + Lambda`` is singular (``l2 = 0`` with an empty item).
    """
    matrix = _checked(gram)
    penalty = dropout_penalty(matrix, dropout, l2)
    inverse = _shifted_inverse(matrix, penalty)
    weights = np.negative(inverse, out=inverse)
    np.multiply(weights, penalty[None, :], out=weights)
    weights[np.diag_indices(len(matrix))] += 1.0
    return weights


def edlae(gram: np.ndarray, dropout: float, l2: float) -> np.ndarray:
    """EDLAE weights ``B = I - P diag(1/diag P)``, ``P = (G + Lambda)^-1``; shape (I, I), ``diag(B) = 0``.

    ``Lambda = diag(p / (1 - p) * diag(G) + l2)``: EASE with the dropout penalty, so popular
    items are regularised more than rare ones.

    Raises:
        ValueError: as ``dropout_penalty``.
        numpy.linalg.LinAlgError: ``G + Lambda`` is singular (``l2 = 0`` with an empty item).
    """
    matrix = _checked(gram)
    penalty = dropout_penalty(matrix, dropout, l2)
    return _zero_diagonal_solution(_shifted_inverse(matrix, penalty))
