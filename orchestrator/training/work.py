"""Pure slice arithmetic: the training work of a monolith, a full SISA retrain and an erasure.

Work is counted in row-epochs (one pass of the optimiser over one row) as a fraction of the
training rows N, assuming balanced shards of N/S rows and slices of N/(S R) rows. With
compute parity (every shard uses the monolith's batch size and epoch budget E), step j
(1-based) of a shard trains ``e = allocate_epochs(E, R)[0]`` epochs on j/R of its rows, so:

    monolith (S=1, R=1):                       E
    full SISA retrain:           S * (1/S) * e * (R+1)/2 = e (R+1)/2      (about E)
    erasure from 0-based slice k of one shard:   (1/S) * e * sum_{j=k+1..R} j/R
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from expunge.shards.schedule import allocate_epochs

__all__ = ["erasure_work", "ideal_speedup", "monolith_ideal_speedup", "sisa_training_work"]


def _check(shards: int, slices: int, first_affected: Sequence[int]) -> None:
    if shards < 1 or slices < 1:
        raise ValueError(f"shards and slices must be >= 1, got {shards}, {slices}")
    if not first_affected:
        raise ValueError("first_affected needs at least one retrained shard's first affected slice")
    outside = [k for k in first_affected if not 0 <= k < slices]
    if outside:
        raise ValueError(f"first affected slices {outside} are outside 0..{slices - 1}")


def erasure_work(shards: int, slices: int, epochs: int, first_affected: int) -> float:
    """Row-epochs over N of retraining one shard from 0-based slice ``first_affected``.

    Raises:
        ValueError: S, R or E below 1, or ``first_affected`` outside 0..R-1.
    """
    _check(shards, slices, [first_affected])
    per_step = allocate_epochs(epochs, slices)[0]
    return per_step * sum(range(first_affected + 1, slices + 1)) / (slices * shards)


def sisa_training_work(slices: int, epochs: int) -> float:
    """Row-epochs over N of training every shard from scratch: ``e (R+1)/2``, about E.

    Its ratio to E is the slicing overhead of the epoch rule (rounding, and the floor of one
    epoch per step): 1.0 at E=20, R=4; 0.9 at E=20, R=8; 2.5 at E=1, R=4.

    Raises:
        ValueError: R or E below 1.
    """
    return allocate_epochs(epochs, slices)[0] * (slices + 1) / 2


def ideal_speedup(shards: int, slices: int, first_affected: Sequence[int]) -> float:
    """Work of retraining every shard over the mean work of retraining one shard from slice k.

    Step j (1-based) trains on j/R of a shard with the same epochs, so its work is
    proportional to j; an erasure from 0-based slice k redoes steps k+1..R. The baseline of
    ``ErasureReceipt.speedup`` (a full SISA retrain); ``first_affected`` holds one entry per
    retrained shard (of one or several erasures), averaged.

    Raises:
        ValueError: S or R below 1, no entry, or an entry outside 0..R-1.
    """
    _check(shards, slices, first_affected)
    full = shards * sum(range(1, slices + 1))
    partial = statistics.mean(sum(range(k + 1, slices + 1)) for k in first_affected)
    return full / partial


def monolith_ideal_speedup(shards: int, slices: int, epochs: int, first_affected: Sequence[int]) -> float:
    """Work of retraining the monolith (S=1, R=1, E epochs on all rows) over the mean erasure work.

    For first affected slice k: ``E S R / (e * sum_{j=k+1..R} j)``; with k uniform over the
    slices, ~5.3x at S=4, R=4 and ~12.5x at S=8, R=8 (E=20). ``first_affected`` as in
    ``ideal_speedup``.

    Raises:
        ValueError: S, R or E below 1, no entry, or an entry outside 0..R-1.
    """
    _check(shards, slices, first_affected)
    partial = statistics.mean(erasure_work(shards, slices, epochs, k) for k in first_affected)
    return epochs / partial
