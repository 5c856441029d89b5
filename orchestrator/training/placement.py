"""Pure placement decisions: which (shard, slice) each subject's rows go to.

Exactness note: in ``balanced`` mode the greedy balancer looks at every subject's row count,
so where others land depends on the erased subject. Expunge therefore treats the persisted
placement map as part of the training input: "training from scratch without the subject"
means training on the remaining rows with the persisted placement of the remaining subjects.
In ``hash`` and ``row`` mode a cell depends only on the subject (or record) itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["Cell", "PlacementMode", "cell_of_key", "place_subjects"]

PlacementMode = Literal["balanced", "hash", "row"]


@dataclass(frozen=True, order=True)
class Cell:
    """One (shard, slice) position; slices are 0-based."""

    shard: int
    slice: int


def cell_of_key(key: str, shards: int, slices: int) -> Cell:
    """Cell chosen from a string alone (a keyed subject digest, or a record id in row mode)."""
    h = hashlib.sha256(key.encode()).digest()
    return Cell(int.from_bytes(h[:8], "big") % shards, int.from_bytes(h[8:16], "big") % slices)


def _least_loaded(loads: list[int]) -> int:
    return min(range(len(loads)), key=lambda i: (loads[i], i))


def place_subjects(
    subject_rows: Mapping[str, int],
    shards: int,
    slices: int,
    mode: Literal["balanced", "hash"],
    existing: Mapping[str, Cell] | None = None,
    existing_rows: Mapping[str, int] | None = None,
) -> dict[str, Cell]:
    """Assign every subject (by digest) to one cell.

    Subjects already in ``existing`` keep their cell, so new rows of a known subject follow
    it. New subjects are placed greedily, largest first (ties by digest), onto the least
    loaded shard and then the least loaded slice of that shard, counting rows already placed.
    """
    if shards < 1 or slices < 1:
        raise ValueError(f"shards and slices must be >= 1, got {shards}, {slices}")
    existing = dict(existing or {})
    placed: dict[str, Cell] = {s: existing[s] for s in subject_rows if s in existing}
    new = [s for s in subject_rows if s not in existing]
    if mode == "hash":
        placed.update({s: cell_of_key(s, shards, slices) for s in new})
        return placed
    shard_load = [0] * shards
    slice_load = [[0] * slices for _ in range(shards)]
    counts = dict(existing_rows or {})
    counts.update(subject_rows)
    for subject, cell in existing.items():
        rows = counts.get(subject, 0)
        shard_load[cell.shard] += rows
        slice_load[cell.shard][cell.slice] += rows
    for subject in sorted(new, key=lambda s: (-subject_rows[s], s)):
        shard = _least_loaded(shard_load)
        slice_ = _least_loaded(slice_load[shard])
        placed[subject] = Cell(shard, slice_)
        shard_load[shard] += subject_rows[subject]
        slice_load[shard][slice_] += subject_rows[subject]
    return placed
