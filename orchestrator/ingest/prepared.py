"""A batch validated and planned against one published version, ready to retrain (``Ingester.prepare``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from expunge.orchestrator.catalog import EnsembleManifest, PlacementIndex
from expunge.orchestrator.config import IngestConfig
from expunge.orchestrator.ingest.batch import PreparedBatch, split_by_cell
from expunge.orchestrator.ingest.slice_policy import IngestPlan, place_after
from expunge.orchestrator.receipts import IngestReceipt
from expunge.shards.manifest import ShardUpdate

__all__ = ["PreparedIngest"]


@dataclass
class PreparedIngest:
    """A validated, planned batch against one published version, ready to retrain (``Ingester.prepare``).

    ``plan`` is None when nothing in the batch is new. An erasure may carry it into its own
    commit (``Eraser.forget_digests(ingest=...)``): each shard then retrains once for both, and
    ``receipt`` holds the ingest's receipt once that commit is done.
    """

    request_id: str
    manifest: EnsembleManifest
    batch: PreparedBatch
    index: PlacementIndex
    plan: IngestPlan | None
    settings: IngestConfig
    began: float
    cpu: float
    finish: Callable[[PreparedIngest, EnsembleManifest, dict[int, ShardUpdate], float, bool, str | None], IngestReceipt]
    #: The receipt of an earlier ingest of the same batch under the same request id (a retry).
    earlier: IngestReceipt | None = None
    receipt: IngestReceipt | None = None

    def shard_calls(self, remove: Mapping[int, Sequence[str]]) -> dict[int, tuple[object, ...]]:
        """Arguments of ``Shard.ingest`` per shard: this batch's rows, plus digests an erasure removes there."""
        plan = self.plan
        tables = split_by_cell(self.batch.rows, {d: (c.shard, c.slice) for d, c in plan.cells.items()}) if plan else {}
        shards = sorted(set(tables) | set(remove))
        return {
            s: (
                tables.get(s, {}),
                self.request_id,
                self.settings.tail_epochs,
                plan.shards[s].merge_from if plan and s in plan.shards else None,
                tuple(remove.get(s, ())),
            )
            for s in shards
        }

    def placement_after(self, erased: set[str]) -> PlacementIndex:
        """The placement once the batch is in and the ``erased`` subjects are out."""
        placed = self.index.without(erased).entries
        if self.plan is None:
            return PlacementIndex(dict(placed))
        return PlacementIndex(place_after(placed, self.batch.subject_rows, self.plan))
