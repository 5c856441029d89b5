"""Pure training-schedule decisions: epochs per slice step and derived seeds."""

from __future__ import annotations

import hashlib

__all__ = ["allocate_epochs", "derive_seed"]


def allocate_epochs(epochs: int, slices: int) -> tuple[int, ...]:
    """Epochs for each of the ``slices`` incremental steps.

    Step j (1-based) trains on j/R of the shard, so a uniform e per step costs
    e * (R + 1) / 2 full-shard epochs; e is chosen so that this matches the ``epochs``
    budget. Every step gets at least one epoch (the SISA reference code rounded this to
    zero for large R and silently trained only a prefix of each shard).
    """
    if epochs < 1 or slices < 1:
        raise ValueError(f"epochs and slices must be >= 1, got {epochs}, {slices}")
    per_step = max(1, round(2 * epochs / (slices + 1)))
    return (per_step,) * slices


def derive_seed(base: int, *parts: object) -> int:
    """A 63-bit seed from a base seed and labels such as (shard, step, epoch)."""
    text = "/".join([str(base), *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1
