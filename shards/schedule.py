"""Pure training-schedule decisions: epochs per slice step and derived seeds."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal, TypeAlias

__all__ = ["SliceScope", "StepRecipe", "allocate_epochs", "derive_seed", "step_recipes"]

#: What a slice step trains on: ``prefix``, slices 0..j (SISA, Bourtoule et al. 2021); ``slice``,
#: slice j's own rows only (an ingested tail slice: a warm start from step j-1 on the new rows).
SliceScope: TypeAlias = Literal["prefix", "slice"]
#: (epochs, scope) of one slice step.
StepRecipe: TypeAlias = tuple[int, SliceScope]


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


def step_recipes(recorded: Sequence[tuple[int | None, SliceScope]], epochs: int) -> tuple[StepRecipe, ...]:
    """(epochs, scope) of every slice step of a shard, from what its manifest records per slice.

    Slices trained at first training record ``epochs=None``: they share
    ``allocate_epochs(epochs, B)`` where B counts them (so slices appended later by ingest
    never change the schedule of the first B). An ingested slice records its own epochs.

    Raises:
        ValueError: a recorded epoch count below 1.
    """
    base = sum(1 for e, _ in recorded if e is None)
    per_base = allocate_epochs(epochs, base)[0] if base else 0
    if any(e is not None and e < 1 for e, _ in recorded):
        raise ValueError("every slice step needs at least one epoch")
    return tuple((per_base if e is None else e, scope) for e, scope in recorded)
