"""When each committed erasure is ready to serve: the served model reflects it (``RequestStatus.ready_at``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime

from expunge.orchestrator.catalog import EnsembleManifest
from expunge.orchestrator.receipts import ErasureReceipt, utc_now
from expunge.orchestrator.service.board import RequestBoard
from expunge.orchestrator.serving.ensemble import StatisticsEnsemble
from expunge.orchestrator.serving.ready import (
    ReadyFits,
    ServedStatistics,
    Solve,
    is_statistics_model,
    solve_from_scratch,
)
from expunge.orchestrator.serving.solve_gate import SolveGate
from expunge.shards.store import ObjectStore

__all__ = ["Readiness"]

log = logging.getLogger(__name__)


class Readiness:
    """The service's ready-to-serve stage, over ``ReadyFits`` for a statistics model.

    A statistics model (``item_stats``) is ready when the exact solve of the commit's version, or
    of a later one, is swapped in; a model served by its shard actors (MF) is ready at the commit.
    Shares the service's condition ``state`` (it guards the board).
    """

    def __init__(
        self,
        store: ObjectStore,
        manifest: EnsembleManifest,
        board: RequestBoard,
        state: threading.Condition,
        solve: Solve = StatisticsEnsemble,
        niceness: int | None = None,
    ) -> None:
        self._board = board
        self._store = store
        self._state = state
        self._waiting: list[tuple[int, tuple[str, ...]]] = []  # (version, request ids), oldest first
        #: Held by the solve's GIL-bound phases; the registration thread yields to them (``Registrar``).
        self.gate = SolveGate()
        statistics = is_statistics_model(manifest)  # ``niceness``: the solve thread's (``ReadyFits``)
        self.fits = ReadyFits(store, self._ready, solve, self.gate, niceness) if statistics else None
        self._requested = manifest.version  # the newest version asked to be solved
        if self.fits is not None:
            self.fits.request(manifest)  # the published version: solved now, not on the first call

    def served(self) -> ServedStatistics | None:
        """The ready statistics model (None: not a statistics model, or its first solve is not done)."""
        return self.fits.served() if self.fits is not None else None

    def mask(self, manifest: EnsembleManifest | None, erased: Sequence[str]) -> None:
        """The ``erased`` subjects, just committed in ``manifest`` (or asked for, and not found in
        it: another writer may have erased them), get no personal answer from a served version
        older than ``manifest`` from now on.

        Call right after the commit, before any status says committed (``committed`` follows).
        """
        if self.fits is not None and manifest is not None:
            self.fits.mask(manifest.version, erased)

    def committed(
        self,
        manifest: EnsembleManifest | None,
        request_ids: Sequence[str],
        erased: Sequence[str],
        receipt: ErasureReceipt | None = None,
        pure: bool = False,
    ) -> None:
        """``request_ids`` were committed, and ``manifest`` is the store's version now; start its solve.

        They are ready once a version at least ``manifest`` is served; at once when nothing
        changed: no statistics model, ``manifest`` None, or ``receipt`` found nobody and
        ``manifest`` is no newer than what was already asked for (a newer one is another writer's,
        which may have erased them: it is solved and waited for). ``pure``: the commit erased
        ``erased`` and did nothing else (no ingest joined, not resumed), so the solve may take them
        out of the previous sum (``ReadyFits.request``'s ``erased_from``). Call after their
        committed statuses are on the board, without holding ``state``.
        """
        changed = receipt is None or receipt.status == "erased"
        if self.fits is None or manifest is None or (not changed and manifest.version <= self._requested):
            with self._state:
                self._mark(tuple(request_ids), utc_now())
                self._state.notify_all()
            return
        with self._state:  # recorded before the request, so a swap at once finds them
            self._waiting.append((manifest.version, tuple(request_ids)))
            self._requested = max(self._requested, manifest.version)
        vouched = pure and changed and receipt is not None and receipt.model_version_after == manifest.version
        self.fits.request(manifest, erased, receipt.model_version_before if vouched and receipt else None)

    def exact_solve_seconds(self, manifest: EnsembleManifest) -> float:
        """Seconds of one from-scratch exact solve of ``manifest`` in this process (no reuse, no swap).

        What ``ready_to_serve`` is compared with (``expunge benchmark service``); 0.0 for a model
        its shard actors serve. Reads the store while commits may run, writes nothing.

        Raises:
            StorageCorruptError: a checkpoint is missing or does not decode (e.g. purged by a newer commit).
        """
        if self.fits is None:
            return 0.0
        began = time.perf_counter()
        solve_from_scratch(self._store, manifest)
        return time.perf_counter() - began

    def close(self) -> None:
        if self.fits is not None:
            self.fits.close()

    def _ready(self, version: int, seconds: float) -> None:
        stamp = utc_now()
        with self._state:
            done = [ids for v, ids in self._waiting if v <= version]
            self._waiting = [(v, ids) for v, ids in self._waiting if v > version]
            for ids in done:
                self._mark(ids, stamp)
            self._state.notify_all()
        log.debug("ensemble v%d ready (%.2f s solve); %d commit(s) answered", version, seconds, len(done))

    def _mark(self, request_ids: tuple[str, ...], stamp: str) -> None:
        """Set ``ready_at`` on the requests' statuses (the caller holds ``state``)."""
        for request_id in request_ids:
            status = self._board.recent(request_id)
            if status is None or status.ready_at is not None:
                continue
            committed = status.committed_at or stamp
            seconds = (datetime.fromisoformat(stamp) - datetime.fromisoformat(committed)).total_seconds()
            self._board.remember(status.model_copy(update={"ready_at": stamp, "ready_to_serve_s": max(seconds, 0.0)}))
            received = (datetime.fromisoformat(stamp) - datetime.fromisoformat(status.received_at)).total_seconds()
            self._board.clock.observe("ready", received)  # /metrics: receipt to ready, as for the other stages
