"""A retrain started early: the next batch's shards retrain while the previous commit is purged and sealed.

The service's pipeline (issue 22): right after the store commit of batch N (its publish), batch
N+1's affected shards start retraining on that version, in a thread that only waits on the shard
pool, while the coordinator purges, writes and seals N. ``Eraser.forget_digests(...,
prefetched=)`` then commits N+1 with those results instead of calling the shards again, if
nothing moved meanwhile (same version, request and subjects); otherwise it discards them (the
actors go back to the published versions, what they wrote is deleted) and retrains as usual.
The objects the early retrain writes are newer than N's commit, so N's purge keeps them
(``store_purge.select_purgeable``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from expunge.orchestrator.catalog import EnsembleManifest, PlacementIndex
from expunge.orchestrator.erasure.routing import RoutingPlan, route
from expunge.orchestrator.pool import ShardPool
from expunge.orchestrator.session import StoreSession
from expunge.shards.manifest import ShardUpdate

__all__ = ["Prefetch", "discard_prefetch", "erase_calls", "start_prefetch"]


@dataclass
class Prefetch:
    """Shard retrains running for request ``request_id`` on ensemble ``manifest_version``."""

    manifest_version: int
    request_id: str
    digests: tuple[str, ...]
    _future: Future[tuple[dict[int, ShardUpdate], float]] = field(repr=False)
    #: Its results were handed out (to a commit, or to ``discard_prefetch``): nothing else may use them.
    taken: bool = False

    @classmethod
    def start(
        cls,
        pool: ShardPool,
        manifest_version: int,
        request_id: str,
        digests: Sequence[str],
        calls: Mapping[int, tuple[Any, ...]],
    ) -> Prefetch:
        """Start the ``erase`` calls ``calls`` (shard -> args) on ``pool`` in a thread of their own."""
        future: Future[tuple[dict[int, ShardUpdate], float]] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                pool.call("ready", {s: () for s in calls})  # started first, as ``Eraser._retrain`` times it
                began = time.perf_counter()
                updates: dict[int, ShardUpdate] = pool.call("erase", calls)
                future.set_result((updates, time.perf_counter() - began))
            except BaseException as exc:  # handed to whoever takes the result, as the pool raised it
                future.set_exception(exc)

        threading.Thread(target=run, name=f"expunge-prefetch-{request_id[:20]}", daemon=True).start()
        return cls(manifest_version, request_id, tuple(dict.fromkeys(digests)), future)

    def matches(self, manifest_version: int, request_id: str, digests: Sequence[str]) -> bool:
        """True when this retrain is the one ``request_id`` needs on ``manifest_version``."""
        return (
            self.manifest_version == manifest_version
            and self.request_id == request_id
            and self.digests == tuple(dict.fromkeys(digests))
        )

    def take(self) -> tuple[dict[int, ShardUpdate], float]:
        """The shards' updates and the retrain's wall seconds, once (waits); raises what the pool raised."""
        if self.taken:
            raise RuntimeError(f"the early retrain of {self.request_id} was already taken")
        self.taken = True
        return self._future.result()


def erase_calls(index: PlacementIndex, plan: RoutingPlan, request_id: str) -> dict[int, tuple[list[str], int, str]]:
    """Shard -> ``Shard.erase`` arguments: the shard's subjects, its first affected slice, the request."""
    cells = index.cells(plan.found)
    return {
        shard: (sorted(d for d in plan.found if any(c.shard == shard for c in cells[d])), first, request_id)
        for shard, first in plan.first_affected_slice.items()
    }


def start_prefetch(session: StoreSession, audited: bool, digests: Sequence[str], request_id: str) -> Prefetch | None:
    """Start retraining the shards that hold ``digests`` on the published version, for ``request_id``.

    The caller holds the store's lease and commits it next (``Eraser.forget_digests(...,
    prefetched=)``). None when there is nothing to start: nobody found, or every erasure is
    ``audited`` (the membership audit must see the shards before they retrain).
    """
    manifest = session.require_manifest()
    if audited:
        return None
    index = session.catalog.read_placement(manifest.placement_key)
    plan = route(list(dict.fromkeys(digests)), index.cells(digests))
    if not plan.found:
        return None
    return Prefetch.start(session.pool, manifest.version, request_id, digests, erase_calls(index, plan, request_id))


def discard_prefetch(session: StoreSession, prefetched: Prefetch, manifest: EnsembleManifest | None) -> None:
    """A started retrain nobody commits: the actors back to the published versions, what they wrote deleted.

    Waits for it to end first. Never raises: a store that does not answer keeps what it wrote for
    the next commit's purge (older than that commit, referenced by no version).
    """
    if prefetched.taken:
        return
    try:
        updates, _ = prefetched.take()
    except Exception:  # it failed: nothing of it is kept either way
        updates = {}
    if manifest is None:
        session.close()  # the actors reload the published versions on their next call
    elif updates:
        session.abandon(manifest, [k for u in updates.values() for k in u.new_keys])
    else:
        session.rollback(manifest)
