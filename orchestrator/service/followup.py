"""After the commit point: journal writes and pending steps are retried with backoff until they succeed.

A committed request is never reported failed. What the store refuses after the commit (a purge
the bucket policy denies, a journal write the network drops) is retried here, and shown in the
request's status meanwhile (``RequestStatus.pending``); nothing waits for a restart.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from expunge.orchestrator.coordinator import Coordinator
from expunge.orchestrator.receipts import ErasureReceipt, utc_now
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.service.board import RequestBoard
from expunge.orchestrator.service.journal import BatchEntry, Journal, JournalEntry, Registration, RequestStatus
from expunge.shards.errors import ExpungeError

__all__ = ["Committed", "FollowUp", "Repair", "Repairs", "backoff_s", "durably"]

log = logging.getLogger(__name__)

_REGISTER_RETRY_PAUSE_S = 1.0
_STOP_CHECK_S = 0.1  # how often a backoff looks at the stop flag


def backoff_s(attempt: int, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """Seconds to wait before retry ``attempt`` (1 = the first retry): doubling from ``base_s`` up to ``cap_s``."""
    return min(cap_s, base_s * 2 ** max(attempt - 1, 0))


def durably(what: str, write: Callable[[], object], stopping: Callable[[], bool]) -> bool:
    """Run ``write`` (an idempotent store write) until it succeeds; False if the service stops first.

    Only failures of circumstance are retried (``ExpungeError``, ``OSError``); a bug raises.
    """
    attempt = 0
    while True:
        try:
            write()
            return True
        except (ExpungeError, OSError) as exc:
            attempt += 1
            if stopping():
                log.warning("%s not written (%s); the service stops, the next start finishes it", what, exc)
                return False
            pause = backoff_s(attempt)
            log.warning("%s not written (%s); retrying in %.1f s (attempt %d)", what, exc, pause, attempt)
            resume_at = time.monotonic() + pause
            while not stopping() and (left := resume_at - time.monotonic()) > 0:
                time.sleep(min(left, _STOP_CHECK_S))  # a stopping service does not sit out the backoff


@dataclass
class Repair:
    """A commit with steps left pending (``receipt.pending``) and the requests it answers."""

    receipt: ErasureReceipt
    request_ids: tuple[str, ...]
    attempt: int = 0
    due: float = field(default_factory=time.monotonic)


class Repairs:
    """Commits whose pending steps are retried, each at its own backoff (the caller holds the lock)."""

    def __init__(self) -> None:
        self.items: list[Repair] = []
        #: Repairs taken and being tried now: still pending, and counted so (``FollowUp.pending``).
        self.running: list[Repair] = []

    def add(self, receipt: ErasureReceipt, request_ids: tuple[str, ...]) -> None:
        self.items.append(Repair(receipt, request_ids))

    def take_due(self, now: float) -> Repair | None:
        """The first repair whose time has come (removed from the list), or None."""
        for index, item in enumerate(self.items):
            if item.due <= now:
                taken = self.items.pop(index)
                self.running.append(taken)
                return taken
        return None

    def finished(self, item: Repair) -> None:
        """``item``'s try is over (done, or put back with ``again``)."""
        if item in self.running:
            self.running.remove(item)

    def wait_s(self, now: float) -> float | None:
        """Seconds until the next repair is due (None: nothing pending)."""
        return max(0.0, min(i.due for i in self.items) - now) if self.items else None

    def again(self, item: Repair, receipt: ErasureReceipt, now: float) -> None:
        """Put ``item`` back with what is still pending, after the next backoff."""
        item.attempt += 1
        item.receipt = receipt
        item.due = now + backoff_s(item.attempt)
        self.items.append(item)

    def pending_steps(self) -> dict[str, int]:
        """How many commits have each step pending, e.g. ``{"purge": 2}``."""
        counts: dict[str, int] = {}
        for item in self.items + self.running:
            for step in {p.split(":", 1)[0] for p in item.receipt.pending}:
                counts[step] = counts.get(step, 0) + 1
        return counts


@dataclass
class Committed:
    """A store commit waiting for its registration: the receipts of its requests, and its own."""

    receipts: list[ErasureReceipt]  # per request
    batch: ErasureReceipt
    since: float = field(default_factory=time.monotonic)
    #: Committed by this process from its own queue: no earlier process can have recorded its
    #: MLflow run, so a not-found run is written without the idempotency search. False (search
    #: first) for what a restart recovered or resumed.
    fresh: bool = False
    #: Its not-found run is written: a registration retried after a later failure does not write it again.
    recorded: bool = False


class FollowUp:
    """The service's steps after a commit: registration in MLflow, and the repair of pending steps.

    Shares the service's locks: ``state`` guards the lists below and the board, ``work`` the coordinator.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        lineage: Lineage | None,
        journal: Journal,
        board: RequestBoard,
        state: threading.Condition,
        work: threading.Lock,
        counts: collections.Counter[str],
        stopped: Callable[[], bool],
    ) -> None:
        self.coordinator = coordinator
        self.lineage = lineage
        self.journal = journal
        self.board = board
        self._state = state
        self._work = work
        self._counts = counts
        #: The service's counters (``ErasureService.stats``), shared with the ingest stage.
        self.counts = counts
        self._stopped = stopped
        self.unregistered: list[Committed] = []
        self.repairs = Repairs()  # commits with steps left pending (purge, receipt log)
        self.registration_error: str | None = None
        #: MLflow, one user at a time: the registration thread, and a repair's reconcile. Never the
        #: coordinator's lock, so a registration never delays a commit.
        self.registering = threading.Lock()

    def pending(self) -> tuple[int, int, str | None]:
        """Commits with steps pending, requests not yet registered, and the last cause (caller holds ``state``)."""
        unregistered = sum(len(c.receipts) for c in self.unregistered)
        repairs = self.repairs.items + self.repairs.running  # one being retried now is still pending
        causes = [p for r in repairs for p in r.receipt.pending] + [self.registration_error or ""]
        return len(repairs), unregistered, next((c for c in causes if c), None)

    def register(self, yield_to: Callable[[], object] = lambda: None) -> None:
        """Bring MLflow up to the published version for every commit waiting; retried on failure.

        Runs on the registration thread (``Registrar``), beside the commits: it reads the store
        and writes MLflow only, so it holds ``registering``, not the coordinator. ``yield_to`` is
        called between its MLflow and journal writes, never while it holds ``registering``
        (``SolveGate.yield_to_solve``: it may wait).
        """
        with self._state:
            done, self.unregistered = self.unregistered, []
        try:  # it yields only without ``registering``: a repair on the commit worker takes that lock
            yield_to()
            with self.registering:
                before = self.lineage.current_version() if self.lineage is not None else None
                version = self.coordinator.register_published()
            lineage = self.lineage
            for item in done:
                if lineage is not None and item.batch.status == "not_found" and not item.recorded:  # the check's run
                    yield_to()
                    with self.registering:
                        checked = self.coordinator.catalog.read(item.batch.model_version_before or 1)
                        lineage.record_request(item.batch, checked, version, fresh=item.fresh)
                    item.recorded = True
        except Exception as exc:  # MLflow raises its own errors too; the commit stands
            log.warning("registering in MLflow failed (%s); trying again shortly", exc)
            for item in done:  # a run may have landed before the failure (an answer lost): search first
                item.fresh = item.fresh and item.recorded
            with self._state:
                self.registration_error = f"registration: {type(exc).__name__}: {exc}"[:500]
                self.unregistered = done + self.unregistered
            time.sleep(_REGISTER_RETRY_PAUSE_S)  # short: commits queued meanwhile go first
            return
        stamp = utc_now()
        registration = Registration(registered_at=stamp, registry_version=version, registry_version_before=before)
        with self._state:
            self.registration_error = None
            self._counts["registrations"] += 1
            for item in done:
                for own in item.receipts:
                    self._counts["registered"] += 1
                    previous = self.board.recent(own.request_id)
                    receipt = own.model_copy(
                        update={
                            "registered_at": stamp,
                            "registry_version_before": before,
                            "registry_version_after": version,
                        }
                    )
                    self.board.remember(
                        RequestStatus(
                            request_id=own.request_id,
                            stage="registered",
                            received_at=previous.received_at if previous else stamp,
                            committed_at=own.committed_at,
                            registered_at=stamp,
                            receipt=receipt,
                            pending=previous.pending if previous else (),
                            ready_at=previous.ready_at if previous else None,
                            ready_to_serve_s=previous.ready_to_serve_s if previous else None,
                        )
                    )
            self._state.notify_all()
        for item in done:
            yield_to()
            for own in item.receipts:
                durably(
                    f"journal registration of {own.request_id}",
                    functools.partial(self.journal.write_registered, own.request_id, registration),
                    self._stopped,
                )

    def repair(self, item: Repair) -> None:
        """Retry the steps a commit left pending; done when nothing is left, else again after a backoff."""
        try:
            with self._work, self.registering:
                receipt = self.coordinator.erasure.finish_pending(item.receipt)
        except Exception as exc:  # after a commit a step is retried, never dropped (a bug included)
            receipt = item.receipt.model_copy(
                update={"pending": (f"{item.receipt.pending[0].split(':', 1)[0]}: {exc}",)}
            )
        with self._state:
            for request_id in item.request_ids:
                previous = self.board.recent(request_id)
                if previous is not None:  # a journal write the journal stage still retries stays shown
                    journal = tuple(p for p in previous.pending if p.startswith("journal: "))
                    self.board.remember(previous.model_copy(update={"pending": receipt.pending + journal}))
            self.repairs.finished(item)
            if receipt.pending:
                self.repairs.again(item, receipt, time.monotonic())
            self._state.notify_all()
        if not receipt.pending:
            log.info("the steps pending after commit %s are done", item.receipt.request_id)
            for request_id in item.request_ids:
                durably(
                    f"journal purge of {request_id}",
                    functools.partial(self.journal.write_purged, request_id),
                    self._stopped,
                )

    def fail(self, entries: list[JournalEntry], batch: BatchEntry, exc: ExpungeError) -> None:
        """Record a batch that failed before its commit: nothing was erased by its requests."""
        message = f"{type(exc).__name__}: {exc}"
        log.error("batch %s failed: %s", batch.batch_id, message)
        for entry in entries:
            durably(
                f"journal failure of {entry.request_id}",
                functools.partial(self.journal.write_failed, entry.request_id, message),
                self._stopped,
            )
        try:
            self.journal.drop_batch(batch.batch_id)
        except ExpungeError as dropped:
            log.warning("could not drop journal batch %s: %s", batch.batch_id, dropped)
        with self._state:
            self._counts["failed"] += len(entries)
            for entry in entries:
                self.board.remember(
                    RequestStatus(
                        request_id=entry.request_id, stage="failed", received_at=entry.received_at, error=message
                    )
                )
            self._state.notify_all()

    def journal_committed(self, receipts: list[ErasureReceipt]) -> dict[str, str]:
        """Write each receipt's committed record once; returns the causes of those not written, by request id."""
        failed: dict[str, str] = {}
        for own in receipts:
            try:
                self.journal.write_committed(own)
            except (ExpungeError, OSError) as exc:
                failed[own.request_id] = f"{type(exc).__name__}: {exc}"[:300]
        return failed

    def journal_again(self, receipts: list[ErasureReceipt], unjournalled: dict[str, str]) -> bool:
        """Write the committed records ``journal_committed`` could not, until they are; then clear their pending.

        Returns False when the service stopped before every one was written.
        """
        for own in receipts:
            if own.request_id not in unjournalled:
                continue
            if not durably(
                f"journal commit of {own.request_id}",
                functools.partial(self.journal.write_committed, own),
                self._stopped,
            ):
                return False
            with self._state:
                if (now := self.board.recent(own.request_id)) is not None:
                    left = tuple(p for p in now.pending if not p.startswith("journal: "))
                    self.board.remember(now.model_copy(update={"pending": left}))
                self._state.notify_all()
        return True
