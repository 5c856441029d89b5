"""Pure routing: which shards an erasure touches, and from which slice each must retrain."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from expunge.orchestrator.training.placement import Cell

__all__ = ["RoutingPlan", "route"]


@dataclass(frozen=True)
class RoutingPlan:
    """``first_affected_slice`` maps each affected shard to the earliest slice holding a subject."""

    first_affected_slice: dict[int, int]
    found: tuple[str, ...]
    not_found: tuple[str, ...]

    @property
    def affected_shards(self) -> list[int]:
        return sorted(self.first_affected_slice)


def route(subject_digests: Iterable[str], index: Mapping[str, Iterable[Cell]]) -> RoutingPlan:
    """Map subjects to shards; several subjects in one shard cost one retrain from the earliest slice."""
    first: dict[int, int] = {}
    found: list[str] = []
    missing: list[str] = []
    for digest in dict.fromkeys(subject_digests):  # dedupe, keep order
        cells = list(index.get(digest, ()))
        if not cells:
            missing.append(digest)
            continue
        found.append(digest)
        for cell in cells:
            first[cell.shard] = min(first.get(cell.shard, cell.slice), cell.slice)
    return RoutingPlan(dict(sorted(first.items())), tuple(found), tuple(missing))
