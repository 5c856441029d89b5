"""Pure ingest placement: which shard and slice each new row goes to, and when a shard compacts.

The slice policy (docs/ingest.md):

- a subject already placed keeps its shard; a new subject's shard comes from the keyed hash
  of its digest (``training.placement.cell_of_key``), so where one person lands never depends on
  anyone else's rows;
- the batch's rows of a shard form one new **tail slice**, appended after the shard's slices,
  so the shard retrains one step, from its last checkpoint, on the new rows alone;
- a model whose subject contribution needs all of a subject's rows in one slice
  (``whole_subject``, the sufficient-statistics model) appends a known subject's rows to the
  slice that holds its rows instead; only new subjects go to the tail;
- **compaction**: when a shard would hold more than ``max_tail_slices`` tail slices, or a
  subject's rows would span more than ``max_subject_slices`` of its slices, every tail slice of
  that shard (the new one included) is merged into one, at the first tail position. Its cost is
  a retrain of that shard from its first tail slice, on the tail rows (docs/ingest.md).

Everything here is a function of its arguments: no I/O, no Ray, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from expunge.orchestrator.training.placement import Cell, cell_of_key

__all__ = ["IngestLimits", "IngestPlan", "ShardIngestPlan", "place_after", "plan_ingest"]


@dataclass(frozen=True)
class IngestLimits:
    """Compaction bounds (``IngestConfig``): tail slices per shard, slices one subject may span."""

    max_tail_slices: int = 24
    max_subject_slices: int = 12

    def __post_init__(self) -> None:
        if self.max_tail_slices < 1 or self.max_subject_slices < 2:
            raise ValueError("max_tail_slices must be >= 1 and max_subject_slices >= 2")


@dataclass(frozen=True)
class ShardIngestPlan:
    """One shard's part of an ingest: subjects per slice their rows join, and the compaction, if any.

    ``appends`` maps a slice index to the digests whose rows join it; the index equal to
    ``slices`` (the shard's slice count before) is the new tail slice. ``merge_from``: merge
    slices ``merge_from..`` (after the append) into one; None when the shard does not compact.
    """

    shard: int
    slices: int
    appends: dict[int, tuple[str, ...]] = field(default_factory=dict)
    merge_from: int | None = None

    @property
    def first_changed(self) -> int:
        """The first slice whose step retrains."""
        first = min(self.appends)
        return first if self.merge_from is None else min(first, self.merge_from)

    @property
    def slices_after(self) -> int:
        """Slices of the shard once the plan is applied."""
        grown = self.slices + (1 if self.slices in self.appends else 0)
        return grown if self.merge_from is None else self.merge_from + 1


@dataclass(frozen=True)
class IngestPlan:
    """Where every batch subject's rows go (``cells``, before compaction) and each touched shard's plan."""

    cells: dict[str, Cell]
    shards: dict[int, ShardIngestPlan]
    new_subjects: tuple[str, ...]

    @property
    def touched_shards(self) -> list[int]:
        return sorted(self.shards)


def plan_ingest(
    batch: Mapping[str, int],
    placed: Mapping[str, Mapping[Cell, int]],
    slice_counts: Sequence[int],
    base_slices: int,
    *,
    whole_subject: bool,
    limits: IngestLimits = IngestLimits(),
) -> IngestPlan:
    """Plan an ingest of ``batch`` (digest -> rows, rows > 0) into shards holding ``placed`` subjects.

    ``placed``: the persisted placement (digest -> cells with row counts); ``slice_counts``: each
    shard's number of slices now; ``base_slices``: slices of the first training (tails follow).

    Raises:
        ValueError: a batch subject with no rows, a placed cell outside the shards, no shards, or a
            shard with fewer slices than ``base_slices``.
    """
    shards = len(slice_counts)
    if shards < 1 or base_slices < 1:
        raise ValueError("an ingest needs at least one shard and one slice")
    if min(slice_counts) < base_slices:
        raise ValueError(f"a shard has fewer slices than the first training's {base_slices}: {list(slice_counts)}")
    cells: dict[str, Cell] = {}
    new: list[str] = []
    for digest in sorted(batch):
        if batch[digest] < 1:
            raise ValueError(f"subject {digest[:12]}... has no rows in the batch")
        known = placed.get(digest)
        if known:
            home = min(known)
            if not 0 <= home.shard < shards:
                raise ValueError(f"subject {digest[:12]}... is placed on shard {home.shard} of {shards}")
            tail = slice_counts[home.shard]
            cells[digest] = Cell(home.shard, home.slice if whole_subject else tail)
        else:
            shard = cell_of_key(digest, shards, base_slices).shard
            cells[digest] = Cell(shard, slice_counts[shard])
            new.append(digest)
    appends: dict[int, dict[int, list[str]]] = {}
    for digest, cell in cells.items():
        appends.setdefault(cell.shard, {}).setdefault(cell.slice, []).append(digest)
    plans = {}
    for shard, by_slice in sorted(appends.items()):
        count = slice_counts[shard]
        tails = count - base_slices + (1 if count in by_slice else 0)
        widest = max(
            len({c.slice for c in placed.get(d, {}) if c.shard == shard} | {cells[d].slice})
            for d in cells
            if cells[d].shard == shard
        )
        compact = tails > limits.max_tail_slices or widest > limits.max_subject_slices
        merge_from = base_slices if compact and tails > 1 else None
        plans[shard] = ShardIngestPlan(shard, count, {k: tuple(v) for k, v in sorted(by_slice.items())}, merge_from)
    return IngestPlan(cells, plans, tuple(new))


def place_after(
    placed: Mapping[str, Mapping[Cell, int]], batch: Mapping[str, int], plan: IngestPlan
) -> dict[str, dict[Cell, int]]:
    """The placement once ``plan`` is applied: batch rows added at their cells, compacted tails merged.

    A cell of a compacted shard at or after ``merge_from`` becomes ``merge_from`` (row counts add up).
    """
    after: dict[str, dict[Cell, int]] = {d: dict(c) for d, c in placed.items()}
    for digest, cell in plan.cells.items():
        cells = after.setdefault(digest, {})
        cells[cell] = cells.get(cell, 0) + batch[digest]
    merging = {s: p.merge_from for s, p in plan.shards.items() if p.merge_from is not None}
    if not merging:
        return after
    for digest, cells in after.items():
        if not any(c.shard in merging and c.slice >= merging[c.shard] for c in cells):
            continue
        moved: dict[Cell, int] = {}
        for cell, rows in cells.items():
            start = merging.get(cell.shard)
            target = Cell(cell.shard, start) if start is not None and cell.slice >= start else cell
            moved[target] = moved.get(target, 0) + rows
        after[digest] = moved
    return after
