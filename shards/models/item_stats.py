"""Item-item sufficient statistics for ratings: a shard's state is an exact sum, so S shards = one model.

What a shard keeps (``ItemStatsState``), for the subjects it holds:

- per item *i*: raters ``n_i``, rating sum ``sum r_ui`` and ``sum z_ui**2``, where
  ``z_ui = r_ui - mean(r_u)`` is the rating centred by its rater's own mean;
- per pair *i < j* rated by at least one of its subjects: co-raters ``n_ij`` and
  ``sum z_ui * z_uj`` (sparse: only pairs that occur);
- every subject's own ratings (digest -> items, ratings), which only that subject's
  predictions read.

Each subject's contribution depends on that subject's rows alone. Ratings and centred ratings
are rounded to multiples of ``2**-10`` (exact for star and half-star scales), so every product
is a multiple of ``2**-20`` and every partial sum of the magnitudes met here (below ``2**33``)
is exact in float64: sums do not depend on order or grouping, and adding the states of S
shards gives the bit-identical state of one model trained on all the rows. Erasure recomputes
one shard from its first affected slice; no aggregator is trained.

What is derived from the summed state (``ItemStatsFit``, deterministic):

- baseline ``mu + b_i + b_u`` with shrunk biases (Koren, "Factor in the neighbors", TKDD 2010, eq. 2);
- item-KNN on baseline residuals with a shrunk item-item cosine of centred ratings
  (Sarwar et al., "Item-based collaborative filtering", WWW 2001; shrinkage as Koren 2010);
- a low-rank Gaussian conditional: the top eigenvectors of the shrunk item covariance give
  item factors, and the user's latent vector is the ridge solution on the user's own residuals
  (probabilistic PCA with users integrated out; Tipping & Bishop, JRSS-B 1999);
- the rating is the baseline plus a fixed blend of the two (``knn_weight``), not trained;
- top-N ranking: EASE on the co-rating counts (Steck, "Embarrassingly shallow autoencoders",
  WWW 2019): ``B = I - P diag(1/diag P)``, ``P = (N + l2 I)^-1``, score = the user's rated
  items times ``B``; or, by ``ranker``, EDLAE / DLAE (Steck, NeurIPS 2020; ``closed_form``).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from expunge.shards.config import ItemStatsConfig
from expunge.shards.models import closed_form, item_stats_dense
from expunge.shards.models.block_lanczos import lanczos_top_eigenpairs
from expunge.shards.models.protocol import StatisticsFit
from expunge.shards.rows import ITEM_ID, RATING, SUBJECT_DIGEST

__all__ = [
    "FIT_BLAS_THREADS",
    "GRID_BITS",
    "ItemStatsFit",
    "ItemStatsModel",
    "ItemStatsState",
    "on_grid",
    "pin_fit_threads",
]

log = logging.getLogger(__name__)

#: Ratings and centred ratings are rounded to multiples of 2**-GRID_BITS before summing.
GRID_BITS = 10
_GRID = float(2**GRID_BITS)


def on_grid(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to the nearest multiple of ``2**-GRID_BITS`` (float64)."""
    return np.asarray(np.round(np.asarray(values, dtype=np.float64) * _GRID) / _GRID, dtype=np.float64)


_BUFFERS: dict[str, torch.dtype] = {
    "item_count": torch.int64,
    "item_sum": torch.float64,
    "item_square": torch.float64,
    "pair_index": torch.int64,
    "pair_count": torch.int64,
    "pair_product": torch.float64,
    "subject_offsets": torch.int64,
    "subject_items": torch.int64,
    "subject_ratings": torch.float64,
}


class ItemStatsState(nn.Module):
    """The summed statistics of some subjects (buffers only: exact tensors, float64 / int64).

    Shapes (I items, P pairs, U subjects, K their ratings): ``item_count``, ``item_sum``,
    ``item_square`` (I,); ``pair_index`` (P,) holds ``i * I + j`` for ``i < j``, ascending, with
    ``pair_count`` and ``pair_product`` (P,); ``subject_offsets`` (U + 1,) delimits each subject's
    ``subject_items`` (ascending) and ``subject_ratings`` in (K,). ``subjects`` lists the U
    digests in ascending order (part of the checkpoint layout, not a tensor).
    """

    item_count: torch.Tensor
    item_sum: torch.Tensor
    item_square: torch.Tensor
    pair_index: torch.Tensor
    pair_count: torch.Tensor
    pair_product: torch.Tensor
    subject_offsets: torch.Tensor
    subject_items: torch.Tensor
    subject_ratings: torch.Tensor
    #: Set by ``ItemStatsModel.without_subjects`` on the state it returns (``refit`` reads it).
    _removal: _Removal | None = None

    def __init__(self, num_items: int, subjects: Sequence[str] = (), pairs: int = 0, ratings: int = 0) -> None:
        super().__init__()
        self.num_items = num_items
        self.subjects = list(subjects)
        sizes = {"pair": pairs, "subject_offsets": len(self.subjects) + 1, "subject_": ratings, "item_": num_items}
        for name, dtype in _BUFFERS.items():
            size = next(n for prefix, n in sizes.items() if name.startswith(prefix))
            self.register_buffer(name, torch.zeros(size, dtype=dtype))

    def array(self, name: str) -> np.ndarray:
        """A buffer as a read-only numpy array (shares memory: a state is an exact sum, never changed in place)."""
        values = np.asarray(getattr(self, name).numpy())
        values.flags.writeable = False
        return values

    def versions(self) -> tuple[int, ...]:
        """The buffers' version counters: any in-place change of one (``load_state_dict``, ``add_``) moves them."""
        return tuple(buffer._version for buffer in self.buffers())

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # type: ignore[no-untyped-call]
        state.pop("_removal", None)  # a weak reference (``ItemStatsModel.without_subjects``): not copied
        return state


@dataclass(frozen=True)
class _Removal:
    """How ``without_subjects`` made a state: from ``parent`` (weakly held), without some subjects.

    ``rated``: the item ids each removed subject rated (ascending, one array each; no digest is
    kept); ``versions``: the new state's buffer versions then (``ItemStatsState.versions``).
    """

    parent: weakref.ReferenceType[ItemStatsState]
    rated: tuple[np.ndarray, ...]
    versions: tuple[int, ...]


def _state(
    num_items: int,
    subjects: Sequence[str],
    arrays: dict[str, np.ndarray],
) -> ItemStatsState:
    state = ItemStatsState(num_items, subjects)  # buffers replaced below: allocate none of pair size
    for name, dtype in _BUFFERS.items():
        values = np.ascontiguousarray(arrays[name])
        if dtype == torch.float64:
            values = values + 0.0  # -0.0 -> +0.0: a zero reached by adding or by subtracting has one bit pattern
        setattr(state, name, torch.from_numpy(values).to(dtype))
    return state


def _pair_sums(
    users: np.ndarray, items: np.ndarray, centred: np.ndarray, num_items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse upper-triangle co-rating counts and centred products of (user, item) cells.

    ``users`` are 0-based; one cell per (user, item). Two sparse products ``X^T X`` over the
    cells (cost: the sum over users of their rated items squared, not items squared per block of
    users): counts are sums of ones and products sums of values on the 2**-20 grid, so every
    sum is exact whatever order the product adds in. A pair's product is read where its count
    is, so a product that sums to exactly 0 keeps its pair (as a dense sum would).
    """
    if len(users) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
    from scipy import sparse  # here, not at import: a shard process of another model never loads scipy

    shape = (int(users.max()) + 1, num_items)
    indicator = sparse.csr_matrix((np.ones(len(users)), (users, items)), shape=shape)
    values = sparse.csr_matrix((centred, (users, items)), shape=shape)
    count = _upper_triangle(indicator.T @ indicator)
    product = _upper_triangle(values.T @ values)
    position = np.searchsorted(product[0], count[0])
    found = position < len(product[0])
    found[found] = product[0][position[found]] == count[0][found]
    pair_product = np.zeros(len(count[0]))
    pair_product[found] = product[1][position[found]]
    return count[0], np.rint(count[1]).astype(np.int64), pair_product


def _upper_triangle(matrix: Any) -> tuple[np.ndarray, np.ndarray]:
    """Stored entries with row < column of a square sparse matrix: (``row * n + column`` ascending, values)."""
    from scipy import sparse

    coo = sparse.triu(matrix, k=1, format="coo")
    index = coo.row.astype(np.int64) * matrix.shape[1] + coo.col.astype(np.int64)
    order = np.argsort(index, kind="stable")
    return index[order], np.asarray(coo.data, dtype=np.float64)[order]


def _merge_pairs(
    indices: list[np.ndarray], counts: list[np.ndarray], products: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add sparse pair statistics with the same index together (exact: integers and grid values).

    Two inputs whose indexes are each ascending and unique (every state's are) merge in
    O(P) by binary search instead of a sort; the sums are the same (exact arithmetic).
    """
    if not indices:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
    if len(indices) == 2 and all(_ascending_unique(i) for i in indices):
        return _merge_two(indices[0], counts[0], products[0], indices[1], counts[1], products[1])
    bins = _num_bins(indices)
    if bins is not None:  # a sum per possible pair (no sort): every pair that occurs, ascending
        every = np.concatenate(indices)
        index = np.flatnonzero(np.bincount(every, minlength=bins))
        count = np.bincount(every, weights=np.concatenate(counts).astype(np.float64), minlength=bins)[index]
        product = np.bincount(every, weights=np.concatenate(products).astype(np.float64), minlength=bins)[index]
        return index.astype(np.int64), np.rint(count).astype(np.int64), product
    index, inverse = np.unique(np.concatenate(indices), return_inverse=True)
    count = np.bincount(inverse, weights=np.concatenate(counts).astype(np.float64), minlength=len(index))
    product = np.bincount(inverse, weights=np.concatenate(products).astype(np.float64), minlength=len(index))
    return index.astype(np.int64), count.astype(np.int64), product


#: Above this many possible pair indexes, several states merge by sorting instead of by one bin per pair.
_MAX_PAIR_BINS = 2**25


def _num_bins(indices: list[np.ndarray]) -> int | None:
    """Bins for a per-pair sum of ``indices`` (the largest index + 1), or None when too many to allocate."""
    largest = max((int(i.max()) for i in indices if len(i)), default=-1)
    return largest + 1 if 0 <= largest < _MAX_PAIR_BINS else None


def _ascending_unique(index: np.ndarray) -> bool:
    return len(index) < 2 or bool(np.all(index[1:] > index[:-1]))


def _merge_two(
    index: np.ndarray, count: np.ndarray, product: np.ndarray, other: np.ndarray, more: np.ndarray, extra: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse sum of two ascending, unique pair lists: the smaller one is looked up in the larger."""
    if len(other) > len(index):
        index, count, product, other, more, extra = other, more, extra, index, count, product
    position = np.searchsorted(index, other)
    found = position < len(index)
    found[found] = index[position[found]] == other[found]
    total_count = count.astype(np.int64, copy=True)
    total_product = product.astype(np.float64, copy=True)
    total_count[position[found]] += more[found].astype(np.int64)
    total_product[position[found]] += extra[found].astype(np.float64)
    fresh = ~found
    if not fresh.any():  # every pair already there (a subtraction, a re-rating): no insert, one copy each
        return index.astype(np.int64, copy=True), total_count, total_product
    return (
        np.insert(index.astype(np.int64), position[fresh], other[fresh]),
        np.insert(total_count, position[fresh], more[fresh].astype(np.int64)),
        np.insert(total_product, position[fresh], extra[fresh].astype(np.float64)),
    )


def _block(state: ItemStatsState, subject: int) -> tuple[np.ndarray, np.ndarray]:
    """One subject's (items, ratings) in ``state`` (views, not copies)."""
    offsets = state.array("subject_offsets")
    begin, end = int(offsets[subject]), int(offsets[subject + 1])
    return state.array("subject_items")[begin:end], state.array("subject_ratings")[begin:end]


def _gathered(
    sources: Sequence[tuple[ItemStatsState, np.ndarray]],
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The subjects at the given positions of each state, in digest order: digests, offsets, items, ratings.

    One gather over all the cells (no loop over subjects' arrays): ``offsets`` (U + 1,) delimit
    each subject's ``items`` and ``ratings`` as in ``ItemStatsState``.
    """
    digests: list[str] = []
    starts, lengths, items, ratings = [], [], [], []
    base = 0
    for state, positions in sources:
        offsets = state.array("subject_offsets")
        digests += [state.subjects[int(u)] for u in positions]
        starts.append(offsets[positions] + base)
        lengths.append(offsets[positions + 1] - offsets[positions])
        items.append(state.array("subject_items"))
        ratings.append(state.array("subject_ratings"))
        base += len(items[-1])
    order = np.array(sorted(range(len(digests)), key=digests.__getitem__), dtype=np.int64)
    start = np.concatenate(starts).astype(np.int64)[order] if starts else np.zeros(0, np.int64)
    length = np.concatenate(lengths).astype(np.int64)[order] if lengths else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(length)]).astype(np.int64)
    index = np.repeat(start - offsets[:-1], length) + np.arange(int(offsets[-1]), dtype=np.int64)
    every_item = np.concatenate(items) if items else np.zeros(0, np.int64)
    every_rating = np.concatenate(ratings) if ratings else np.zeros(0)
    return [digests[i] for i in order], offsets, every_item[index], every_rating[index]


def _cells(states: Sequence[nn.Module], num_items: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every subject's (items, ratings) cells in ``states`` (views), by digest."""
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for state in states:
        if not isinstance(state, ItemStatsState) or state.num_items != num_items:
            raise ValueError(f"changed_parts needs ItemStatsState objects over {num_items} items")
        found.update((d, _block(state, u)) for u, d in enumerate(state.subjects))
    return found


def _top_eigenpairs(matrix: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` largest eigenvalues (descending) of a symmetric (n, n) matrix and their eigenvectors (n, count).

    Block Lanczos from a fixed start block (``block_lanczos.lanczos_top_eigenpairs``): on
    MovieLens 100K's 1,683 items 0.065 s of CPU against 0.32 s for LAPACK's ``dsyevr`` subset
    solver, which it falls back to on small or degenerate matrices and on spectra with no gap
    below the wanted pairs (random or low-rank generated ratings often have none; MovieLens has
    one). Deterministic (no random restart, unlike ARPACK, whose restarts after an invariant
    subspace made the same state give other factors), and every product releases the GIL
    (docs/performance.md, "The GIL").
    Eigenvector signs are arbitrary; the low-rank predictor uses only their span, scaled by the
    eigenvalues.
    """
    size = matrix.shape[0]
    if count <= 0 or size == 0:
        return np.zeros(0), np.zeros((size, 0))
    return lanczos_top_eigenpairs(matrix, min(count, size))


#: BLAS/LAPACK threads every fit runs with. The eigensolver's and the inverse's bits depend on
#: the thread count (OpenBLAS splits the work differently), so a fit pinned to one count gives
#: the same bits on any machine; one thread is also the fastest here on a loaded machine
#: (ML-100K, 1,683 items, two shared cores: 0.8-1.0 s against 2-5.6 s with two threads).
FIT_BLAS_THREADS = 1
_blas: list[Any] | None = None  # threadpoolctl's controllers of the loaded BLAS libraries, found once


def pin_fit_threads() -> bool:
    """Set this process's BLAS libraries (numpy's and scipy's OpenBLAS) to ``FIT_BLAS_THREADS`` threads.

    Called at the start of every fit, and kept (not restored): a limit restored while another
    thread fits would let that fit finish on another thread count, with other bits. Cheap (one
    call per library). ``threadpoolctl`` (installed with MLflow's scikit-learn) finds the
    libraries; without it a warning is logged once and BLAS keeps its own thread count.
    Returns True when the count is set.
    """
    global _blas
    if _blas is None:
        from scipy import linalg  # noqa: F401  # loaded first, so that its own OpenBLAS is found too

        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - an install without MLflow's scikit-learn
            log.warning("threadpoolctl is not installed: item_stats fits run on BLAS's own thread count")
            _blas = []
            return False
        _blas = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    for library in _blas:
        library.set_num_threads(FIT_BLAS_THREADS)
    return bool(_blas)


def _pair_arrays(state: ItemStatsState, count: np.ndarray) -> item_stats_dense.PairArrays:
    return item_stats_dense.PairArrays(
        state.num_items,
        state.array("pair_index"),
        state.array("pair_count"),
        state.array("pair_product"),
        count,
        state.array("item_square"),
    )


#: A fit carries the previous fit's dense inputs over when the erased subjects rated at most this
#: share of the items; above it, rewriting their rows and columns costs about what a build does
#: (MovieLens 100K: 12-32 ms against 55 ms at 30 % of the items, 51-81 against 53-66 ms at 45-66 %).
CARRY_OVER_SHARE = 1 / 3
_TAKING = threading.Lock()  # a fit's kept inputs go to one later fit, whichever thread takes them


def _carried_items(
    state: ItemStatsState, source: ItemStatsState | None, previous: ItemStatsFit | None, config: ItemStatsConfig
) -> tuple[np.ndarray, ...] | None:
    """The items each removed subject rated, whose entries a fit of ``state`` rewrites from ``previous``'s,
    or None: build them.

    Only where ``without_subjects`` made ``state`` from ``source`` (the very state ``previous`` was
    fitted on), neither changed in place since (their buffers' versions; ``array`` is read-only),
    which proves that ``state`` is ``source`` without the recorded subjects, under the same config,
    and those subjects rated at most ``CARRY_OVER_SHARE`` of the items. Each other case is logged at
    debug level.
    """
    removal = getattr(state, "_removal", None)
    if previous is None or source is None or removal is None or removal.parent() is not source:
        log.debug("item_stats fit: the state was not made from the previous fit's by without_subjects; building")
        return None
    if source.versions() != previous._versions or state.versions() != removal.versions:
        log.debug("item_stats fit: a state was changed in place since; building the dense inputs")
        return None
    if previous.config != config:
        log.debug("item_stats fit: another config than the previous fit's; building the dense inputs")
        return None
    changed = len(np.unique(np.concatenate(removal.rated))) if removal.rated else 0
    if changed > CARRY_OVER_SHARE * state.num_items:
        log.debug("item_stats fit: the erased subjects rated %d of %d items; building", changed, state.num_items)
        return None
    return removal.rated


class ItemStatsFit:
    """Predictions and rankings derived from one summed ``ItemStatsState`` (see the module docstring).

    Memory: a few dense ``num_items x num_items`` float64 matrices (23 MB each for MovieLens
    100K's 1,683 item ids; 125 MB for MovieLens 1M's 3,953); a refit keeps two more, three with
    ``factors`` (``ItemStatsModel.refit``).
    """

    similarity: np.ndarray  # (I, I) shrunk cosine of centred ratings, zero diagonal
    _subjects: dict[str, tuple[np.ndarray, np.ndarray]]  # digest -> (items, ratings)

    def __init__(
        self,
        config: ItemStatsConfig,
        state: ItemStatsState,
        *,
        previous: ItemStatsFit | None = None,
        keep: bool = False,
    ) -> None:
        """Fit ``state``; ``keep``: keep the dense inputs for a later fit's ``previous`` (``ItemStatsModel.refit``).

        ``previous``: a kept fit, whose dense inputs this fit takes (``previous`` no longer holds
        them). Where ``without_subjects`` made ``state`` from ``previous``'s state and the erased
        subjects rated at most ``CARRY_OVER_SHARE`` of the items, they are carried over
        (``item_stats_dense.carry_over``); else they are dropped and built. The same bits either way.
        """
        pin_fit_threads()  # the same bits on every machine (``FIT_BLAS_THREADS``)
        self.config = config
        count = state.array("item_count").astype(np.float64)
        total = float(count.sum())
        self.mu = float(state.array("item_sum").sum()) / total if total else 0.0
        self.item_bias = (state.array("item_sum") - count * self.mu) / (count + config.item_bias_shrinkage)
        self.rated_items = count > 0
        pairs = _pair_arrays(state, count)
        #: Whether the dense inputs were carried over from ``previous`` (else built from every pair).
        self.carried = False
        taken, source = previous._give_inputs() if previous is not None else (None, None)
        changed = _carried_items(state, source, previous, config) if taken is not None else None
        inputs, similarity = None, None
        if taken is not None and changed is not None and previous is not None:
            try:
                similarity = item_stats_dense.carry_over(config, taken, previous.similarity, pairs, changed)
                inputs, self.carried = taken, True
            except ValueError as exc:  # a state changed otherwise than its record says: built from scratch
                log.warning("item_stats fit: the previous fit's matrices do not carry over (%s); building them", exc)
        del taken  # dropped before the build when not carried over: one set of matrices at a time
        if inputs is None or similarity is None:
            inputs, similarity = item_stats_dense.build(config, pairs)
        self.similarity = similarity
        self.factors = np.zeros((state.num_items, 0))
        if inputs.covariance is not None:
            values, vectors = _top_eigenpairs(inputs.covariance, config.factors)
            self.factors = vectors * np.sqrt(np.maximum(values, 0.0))
        co_count = inputs.co_count
        #: Kept for the next fit (``previous``) when asked; else dropped before EASE's inverse (memory).
        self._inputs: item_stats_dense.DenseInputs | None = inputs if keep else None
        self._state = state if keep else None  # what ``_inputs`` were made from (the ensemble holds it too)
        self._versions = state.versions() if keep else ()  # ... as it was then
        del inputs
        self.ranking = self._ranking(config, co_count)
        del co_count
        offsets = state.array("subject_offsets")
        items, ratings = state.array("subject_items"), state.array("subject_ratings")
        self._subjects = {
            digest: (items[offsets[u] : offsets[u + 1]], ratings[offsets[u] : offsets[u + 1]])
            for u, digest in enumerate(state.subjects)
        }

    def _give_inputs(self) -> tuple[item_stats_dense.DenseInputs | None, ItemStatsState | None]:
        """This fit's kept dense inputs and the state they were made from, given up (None if none or taken)."""
        with _TAKING:
            inputs, self._inputs = self._inputs, None
            source, self._state = self._state, None
        return (inputs, source) if inputs is not None and source is not None else (None, None)

    @staticmethod
    def _ranking(config: ItemStatsConfig, co_count: np.ndarray) -> np.ndarray:
        """Item-item top-N weights (I, I) of ``config.ranker`` on the co-rating counts (``closed_form``)."""
        if config.ranker == "edlae":
            return closed_form.edlae(co_count, config.ranking_dropout, config.ranking_dropout_l2)
        if config.ranker == "dlae":
            return closed_form.dlae(co_count, config.ranking_dropout, config.ranking_dropout_l2)
        return closed_form.ease(co_count, config.ranking_l2)

    def knows(self, subject_digest: str) -> bool:
        return subject_digest in self._subjects

    def subject_items(self, subject_digest: str) -> np.ndarray:
        """Item ids the subject rated (ascending); ``KeyError`` for an unknown subject."""
        return self._subjects[subject_digest][0]

    def _personal(self, subject_digest: str, targets: np.ndarray) -> np.ndarray:
        """User bias plus the blended KNN / low-rank residual for the subject's ``targets``."""
        config = self.config
        rated, ratings = self._subjects[subject_digest]
        baseline = self.mu + self.item_bias[rated]
        user_bias = float((ratings - baseline).sum()) / (len(rated) + config.user_bias_shrinkage)
        residual = ratings - baseline - user_bias
        weights = np.maximum(self.similarity[np.ix_(targets, rated)], 0.0)
        if len(rated) > config.neighbours:
            kth = -np.partition(-weights, config.neighbours - 1, axis=1)[:, config.neighbours - 1 : config.neighbours]
            weights = np.where(weights >= kth, weights, 0.0)
        total = weights.sum(axis=1)
        knn = np.where(total > 0, weights @ residual / np.where(total > 0, total, 1.0), 0.0)
        if self.factors.shape[1] == 0:
            return user_bias + knn
        rated_factors = self.factors[rated]
        gram = rated_factors.T @ rated_factors + config.factor_noise * np.eye(self.factors.shape[1])
        latent = np.linalg.solve(gram, rated_factors.T @ residual)
        low_rank = self.factors[targets] @ latent
        return user_bias + config.knn_weight * knn + (1.0 - config.knn_weight) * low_rank

    def predict(self, rows: pa.Table) -> np.ndarray:
        """Predicted ratings (float64, unclipped) for rows with ``item_id`` and ``subject_digest``.

        Rows of subjects the state does not hold get ``mu + b_i``. Raises ``ValueError`` for
        item ids outside ``[0, num_items)``.
        """
        items = rows.column(ITEM_ID).to_numpy().astype(np.int64)
        size = len(self.item_bias)
        if len(items) and (items.min() < 0 or items.max() >= size):
            raise ValueError(
                f"item ids must lie in [0, {size}); found [{items.min()}, {items.max()}]. Raise training.model.num_items."
            )
        scores = self.mu + self.item_bias[items]
        if SUBJECT_DIGEST not in rows.column_names or len(items) == 0:
            return scores
        digests, row_subject = np.unique(
            np.asarray([d or "" for d in rows.column(SUBJECT_DIGEST).to_pylist()], dtype=str), return_inverse=True
        )
        order = np.argsort(row_subject, kind="stable")
        bounds = np.searchsorted(row_subject[order], np.arange(len(digests) + 1))
        for position, digest in enumerate(digests):
            if str(digest) in self._subjects:
                chosen = order[bounds[position] : bounds[position + 1]]
                scores[chosen] += self._personal(str(digest), items[chosen])
        return scores

    def ranking_scores(self, subject_digest: str) -> np.ndarray:
        """Score of every item for the subject under ``config.ranker`` (rated items included), shape (num_items,)."""
        rated = self._subjects[subject_digest][0]
        return np.asarray(self.ranking[rated].sum(axis=0))

    def recommend(self, subject_digest: str, k: int) -> list[int]:
        """The ``k`` items with the best ranking score among items someone rated and the subject did not.

        Ties go to the smaller item id. Raises ``KeyError`` for a subject the state does not hold.
        """
        scores = self.ranking_scores(subject_digest)
        candidate = self.rated_items.copy()
        candidate[self.subject_items(subject_digest)] = False
        order = np.argsort(-scores, kind="stable")
        return [int(i) for i in order[candidate[order]][:k]]


class ItemStatsModel:
    """The item-item statistics model family (see ``SufficientStatisticsModel`` and the module docstring)."""

    task: Literal["rating", "classification"] = "rating"
    subject_specific = True

    def __init__(self, config: ItemStatsConfig) -> None:
        if config.num_items < 1:
            raise ValueError("ItemStatsModel needs num_items >= 1 (resolve it from the data first)")
        self.config = config
        self.num_items = config.num_items

    def empty(self) -> nn.Module:
        return ItemStatsState(self.num_items)

    def layout(self, state: nn.Module) -> dict[str, Any]:
        assert isinstance(state, ItemStatsState)
        return {"subjects": state.subjects, "pairs": len(state.pair_index), "ratings": len(state.subject_items)}

    def rebuild(self, layout: dict[str, Any]) -> nn.Module:
        return ItemStatsState(
            self.num_items, layout.get("subjects", []), layout.get("pairs", 0), layout.get("ratings", 0)
        )

    def contribution(self, rows: pa.Table) -> ItemStatsState:
        """The state of ``rows`` alone: every subject's complete rows (a subject's own mean centres them).

        A subject rating one item twice counts once, with the mean of its ratings. Raises
        ``ValueError`` for item ids outside ``[0, num_items)``.
        """
        size = self.num_items
        if len(rows) == 0:
            return ItemStatsState(size)
        items = rows.column(ITEM_ID).to_numpy().astype(np.int64)
        if items.min() < 0 or items.max() >= size:
            raise ValueError(
                f"item ids must lie in [0, {size}); found [{items.min()}, {items.max()}]. Raise training.model.num_items."
            )
        subjects, user = np.unique(np.asarray(rows.column(SUBJECT_DIGEST).to_pylist(), dtype=str), return_inverse=True)
        ratings = on_grid(pc.cast(rows.column(RATING), pa.float64()).to_numpy())
        cells, cell_of_row = np.unique(user * size + items, return_inverse=True)  # by subject, then item
        per_cell = np.bincount(cell_of_row, minlength=len(cells))
        cell_rating = on_grid(np.bincount(cell_of_row, weights=ratings, minlength=len(cells)) / per_cell)
        cell_user, cell_item = cells // size, cells % size
        subject_count = np.bincount(cell_user, minlength=len(subjects))
        subject_mean = np.bincount(cell_user, weights=cell_rating, minlength=len(subjects)) / subject_count
        centred = on_grid(cell_rating - subject_mean[cell_user])
        pair_index, pair_count, pair_product = _pair_sums(cell_user, cell_item, centred, size)
        arrays = {
            "item_count": np.bincount(cell_item, minlength=size),
            "item_sum": np.bincount(cell_item, weights=cell_rating, minlength=size),
            "item_square": np.bincount(cell_item, weights=centred * centred, minlength=size),
            "pair_index": pair_index,
            "pair_count": pair_count,
            "pair_product": pair_product,
            "subject_offsets": np.concatenate([[0], np.cumsum(subject_count)]),
            "subject_items": cell_item,
            "subject_ratings": cell_rating,
        }
        return _state(size, [str(s) for s in subjects], arrays)

    def accumulate(self, state: nn.Module, slice_rows: pa.Table) -> nn.Module:
        return self.combine([state, self.contribution(slice_rows)])

    def combine(self, states: Sequence[nn.Module]) -> nn.Module:
        """The exact sum of states; subjects are concatenated in digest order.

        Raises ``ValueError`` when a subject occurs in two states: its rows were split (row
        placement, or one subject over several slices), and its own mean would not be its own.
        """
        parts = [s for s in states if isinstance(s, ItemStatsState)]
        if len(parts) != len(states) or any(p.num_items != self.num_items for p in parts):
            raise ValueError(f"combine needs ItemStatsState objects over {self.num_items} items")
        if len(parts) > 1:  # a state of no subjects adds nothing (e.g. the start of step 0): no merge for it
            parts = [p for p in parts if p.subjects] or parts[:1]
        if len(parts) == 1:
            return parts[0]
        subjects = [d for p in parts for d in p.subjects]
        order = sorted(range(len(subjects)), key=subjects.__getitem__)
        ordered = [subjects[i] for i in order]
        repeated = sorted({a for a, b in pairwise(ordered) if a == b})
        if repeated:
            raise ValueError(
                f"{len(repeated)} subject(s) (e.g. digest {repeated[0][:12]}...) occur in more than one shard or "
                "slice: the item_stats model needs each subject's rows in one slice (sharding.placement "
                "'balanced' or 'hash')"
            )
        pair_index, pair_count, pair_product = _merge_pairs(
            [p.array("pair_index") for p in parts],
            [p.array("pair_count") for p in parts],
            [p.array("pair_product") for p in parts],
        )
        _, offsets, items, ratings = _gathered([(p, np.arange(len(p.subjects))) for p in parts])
        arrays = {
            name: np.sum([p.array(name) for p in parts], axis=0) if parts else np.zeros(self.num_items)
            for name in ("item_count", "item_sum", "item_square")
        }
        arrays.update(
            {
                "pair_index": pair_index,
                "pair_count": pair_count,
                "pair_product": pair_product,
                "subject_offsets": offsets,
                "subject_items": items,
                "subject_ratings": ratings,
            }
        )
        return _state(self.num_items, ordered, arrays)

    def subtract(self, state: nn.Module, part: nn.Module, replacement: nn.Module | None = None) -> nn.Module:
        """``state`` without ``part``, plus ``replacement``: exact, no retraining.

        ``part`` is a state of complete rows of some of ``state``'s subjects (their contribution
        goes out); ``replacement``, if given, is a state of subjects ``state`` no longer holds once
        ``part`` is out (their new complete rows, e.g. after an ingest; it comes in). Every sum is
        on the ``2**-20`` grid, so the result is bit for bit the state summed from scratch over the
        new rows (pairs nobody co-rates any more are dropped, as a fresh sum never has them).
        Cost: the two small parts are merged first, then one O(pairs) merge with ``state``; no
        pass over anyone else's rows.

        Raises:
            ValueError: ``part`` holds a subject ``state`` does not, ``replacement`` one that stays
                in ``state``, or the states disagree on items.
        """
        added = ItemStatsState(self.num_items) if replacement is None else replacement
        if not (
            isinstance(state, ItemStatsState) and isinstance(part, ItemStatsState) and isinstance(added, ItemStatsState)
        ):
            raise ValueError("subtract needs ItemStatsState objects")
        if {state.num_items, part.num_items, added.num_items} != {self.num_items}:
            raise ValueError(f"states over {state.num_items}, {part.num_items} and {added.num_items} items")
        position = {d: u for u, d in enumerate(state.subjects)}
        missing = [d for d in part.subjects if d not in position]
        if missing:
            raise ValueError(f"{len(missing)} subject(s) to subtract are not in the state (e.g. {missing[0][:12]}...)")
        gone = {position[d] for d in part.subjects}
        staying = [d for d in added.subjects if d in position and position[d] not in gone]
        if staying:
            raise ValueError(
                f"{len(staying)} subject(s) to add are already in the state (e.g. {staying[0][:12]}...): "
                "subtract their old contribution in the same call"
            )
        change = _merge_pairs(
            [part.array("pair_index"), added.array("pair_index")],
            [-part.array("pair_count"), added.array("pair_count")],
            [-part.array("pair_product"), added.array("pair_product")],
        )
        index, count, product = _merge_pairs(
            [state.array("pair_index"), change[0]],
            [state.array("pair_count"), change[1]],
            [state.array("pair_product"), change[2]],
        )
        kept_pairs = count != 0
        if not kept_pairs.all():  # pairs left without raters go (else the merged arrays, fresh, as they are)
            index, count, product = index[kept_pairs], count[kept_pairs], product[kept_pairs]
        kept = np.array([u for u in range(len(state.subjects)) if u not in gone], dtype=np.int64)
        subjects, offsets, items, ratings = _gathered([(state, kept), (added, np.arange(len(added.subjects)))])
        arrays = {
            name: state.array(name) - part.array(name) + added.array(name)
            for name in ("item_count", "item_sum", "item_square")
        }
        arrays.update(
            {
                "pair_index": index,
                "pair_count": count,
                "pair_product": product,
                "subject_offsets": offsets,
                "subject_items": items,
                "subject_ratings": ratings,
            }
        )
        return _state(self.num_items, subjects, arrays)

    def changed_parts(self, before: Sequence[nn.Module], after: Sequence[nn.Module]) -> tuple[nn.Module, nn.Module]:
        """What changed from the states ``before`` to the states ``after`` (of the same shards), as two small states.

        ``out``: the contribution of every subject whose cells differ (or who is gone) as it was;
        ``into``: as it is now (or a new subject's). ``subtract(total, out, into)`` is bit for bit
        ``subtract(total, combine(before), combine(after))`` (a state is the exact sum of its
        subjects' contributions), at the cost of the changed subjects' pairs instead of every
        pair of the shards. Each contribution is rebuilt from the subject's stored cells
        (``subject_items``, ``subject_ratings``): ``contribution``'s own arithmetic on them.

        Raises:
            ValueError: a state that is not an ``ItemStatsState`` over this model's items.
        """
        old, new = _cells(before, self.num_items), _cells(after, self.num_items)
        gone = [
            d
            for d, (items, ratings) in old.items()
            if d not in new or not (np.array_equal(items, new[d][0]) and np.array_equal(ratings, new[d][1]))
        ]
        went = set(gone)
        came = [d for d in new if d not in old or d in went]
        return self._of_cells(old, gone), self._of_cells(new, came)

    def subjects_of(self, state: nn.Module) -> list[str]:
        """The digests of the subjects ``state`` holds rows of, ascending."""
        assert isinstance(state, ItemStatsState)
        return list(state.subjects)

    def without_subjects(self, state: nn.Module, digests: Sequence[str]) -> nn.Module:
        """``state`` without every row of the subjects ``digests``: ``subtract`` of their contribution.

        The contribution is rebuilt from the cells ``state`` stores of them (``subject_items``,
        ``subject_ratings``: ``contribution``'s own arithmetic on them, as ``changed_parts``), so the
        result is bit for bit the state summed from scratch without their rows, and nothing but
        ``state`` is read. Cost: a lookup of each digest, then ``subtract``'s merges.

        Raises:
            ValueError: ``state`` is not an ``ItemStatsState`` over this model's items, or does not
                hold one of ``digests``.
        """
        if not isinstance(state, ItemStatsState) or state.num_items != self.num_items:
            raise ValueError(f"without_subjects needs an ItemStatsState over {self.num_items} items")
        position = {d: u for u, d in enumerate(state.subjects)}
        wanted = sorted(set(digests))
        missing = [d for d in wanted if d not in position]
        if missing:
            raise ValueError(f"{len(missing)} subject(s) to take out are not in the state (e.g. {missing[0][:12]}...)")
        if not wanted:
            return state
        cells = {d: _block(state, position[d]) for d in wanted}
        result = self.subtract(state, self._of_cells(cells, wanted))
        assert isinstance(result, ItemStatsState)
        rated = tuple(np.array(items, dtype=np.int64) for items, _ in cells.values())  # copies: no view of ``state``
        result._removal = _Removal(weakref.ref(state), rated, result.versions())  # what ``refit`` may carry over
        return result

    def _of_cells(self, cells: dict[str, tuple[np.ndarray, np.ndarray]], digests: Sequence[str]) -> ItemStatsState:
        if not digests:
            return ItemStatsState(self.num_items)
        lengths = [len(cells[d][0]) for d in digests]
        rows = pa.table(
            {
                SUBJECT_DIGEST: pa.array(np.repeat(np.asarray(digests, dtype=object), lengths), pa.string()),
                ITEM_ID: pa.array(np.concatenate([cells[d][0] for d in digests]), pa.int64()),
                RATING: pa.array(np.concatenate([cells[d][1] for d in digests]), pa.float64()),
            }
        )
        return self.contribution(rows)  # one row per cell, ratings on the grid: the same sums as before

    def fit(self, state: nn.Module) -> ItemStatsFit:
        assert isinstance(state, ItemStatsState)
        return ItemStatsFit(self.config, state)

    def refit(self, state: nn.Module, previous: StatisticsFit | None = None) -> ItemStatsFit:
        """``fit(state)``, bit for bit, keeping the fit's dense inputs for the next refit.

        Kept: the co-rating counts and products and, with ``factors``, the shrunk covariance (two or
        three more I x I float64 matrices: 23 MB each on MovieLens 100K, 125 MB on MovieLens 1M).
        ``previous``: the last refit; this one takes its inputs (``previous`` keeps serving as it
        was, and a second refit from it builds). Where ``without_subjects`` made ``state`` from the
        state ``previous`` was fitted on, and the erased subjects rated at most ``CARRY_OVER_SHARE``
        of the items, the inputs are rewritten on those subjects' items only
        (``item_stats_dense.carry_over``) instead of built from every pair (``fit.carried`` says
        which); otherwise (a plain fit, another config, a state made otherwise) they are dropped and
        built. The service's ready solve calls this (``serving/ready.py``).
        """
        assert isinstance(state, ItemStatsState)
        last = previous if isinstance(previous, ItemStatsFit) else None
        return ItemStatsFit(self.config, state, previous=last, keep=True)
