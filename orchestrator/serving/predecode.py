"""The changed shards' states of a newly requested version, decoded on a thread of their own, beside the solve.

Under a stream of commits the ready solve of version v runs while v+1, v+2, ... are published.
Decoding a changed shard's checkpoint holds the GIL (about a third of a solve's time under the
stream, docs/performance.md), while most of the solve runs in LAPACK without it. So each newly
requested version's changed checkpoints are decoded here, while the solve under way is in
LAPACK, and the next solve takes them decoded (``take``) instead of reading them on its own
critical path. The states are the same objects ``load_checkpoint`` gives (same bytes, same
code), so the solve's bits do not change. A decode that fails is left to the solve, which reads
the checkpoint itself and reports what is wrong.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

import torch

from expunge.orchestrator.catalog import Catalog
from expunge.orchestrator.errors import StorageCorruptError
from expunge.shards.models import SufficientStatisticsModel
from expunge.shards.store import ObjectStore
from expunge.shards.training import load_checkpoint

__all__ = ["Predecoder"]

log = logging.getLogger(__name__)

Key = tuple[int, int]  # (shard, shard version)


class Predecoder:
    """Decodes wanted shard states, newest request first; ``take`` hands one over (once).

    ``want`` replaces what is wanted (the newest version's changed shards); ``keep`` drops
    decoded states a solved version made useless. Holds at most the states of the shard
    versions wanted since the last solve. Thread-safe.
    """

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self._catalog = Catalog(store)  # its own reader: the solve's catalog is the ready thread's
        self._changed = threading.Condition()
        self._wanted: list[Key] = []
        self._model: SufficientStatisticsModel | None = None
        self._decoding: set[Key] = set()
        self._done: dict[Key, torch.nn.Module] = {}
        self._closed = False
        #: States decoded here, and states a solve took from here (tests, benchmarks).
        self.counts = {"decoded": 0, "taken": 0, "failed": 0}
        self._thread = threading.Thread(target=self._run, name="expunge-ready-decode", daemon=True)
        self._thread.start()

    def want(self, model: SufficientStatisticsModel, keys: Iterable[Key]) -> None:
        """Decode ``keys`` (shard, shard version) of ``model`` next, instead of anything wanted before."""
        with self._changed:
            self._model = model
            self._wanted = [k for k in keys if k not in self._done and k not in self._decoding]
            self._changed.notify_all()

    def take(self, key: Key) -> torch.nn.Module | None:
        """The decoded state of ``key`` (waiting if it is being decoded now), or None: decode it yourself."""
        with self._changed:
            if key in self._wanted:
                self._wanted.remove(key)  # the solve reads it now; decoding it here too would be waste
            while key in self._decoding and not self._closed:
                self._changed.wait()
            state = self._done.pop(key, None)
            if state is not None:
                self.counts["taken"] += 1
            return state

    def keep(self, newest: dict[int, int]) -> None:
        """Drop decoded or wanted states of shard versions at or below ``newest[shard]`` (solved, or superseded)."""
        with self._changed:
            self._done = {k: s for k, s in self._done.items() if k[1] > newest.get(k[0], -1)}
            self._wanted = [k for k in self._wanted if k[1] > newest.get(k[0], -1)]

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout=60)

    def _next(self) -> tuple[SufficientStatisticsModel, Key] | None:
        with self._changed:
            while not self._closed:
                if self._wanted and self._model is not None:
                    key = self._wanted.pop(0)
                    self._decoding.add(key)
                    return self._model, key
                self._changed.wait()
            return None

    def _run(self) -> None:
        while (job := self._next()) is not None:
            model, key = job
            state: torch.nn.Module | None = None
            try:
                checkpoints = self._catalog.shard_manifest(*key).checkpoints
                if not checkpoints:
                    raise StorageCorruptError(f"shard {key[0]} manifest v{key[1]} lists no checkpoint")
                state = load_checkpoint(model, self._store.get(checkpoints[-1].key)).module
            except Exception as exc:  # e.g. purged by a newer commit: the solve reads it and says why
                log.debug("shard %d v%d not decoded ahead (%s); the solve reads it", key[0], key[1], exc)
            with self._changed:
                self._decoding.discard(key)
                if state is not None:
                    self._done[key] = state
                    self.counts["decoded"] += 1
                else:
                    self.counts["failed"] += 1
                self._changed.notify_all()
