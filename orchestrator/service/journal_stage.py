"""The service's journal stage: each commit's journal records written beside the next commit, in commit order.

The commit worker answers a request as soon as its store commit is sealed; the journal's
``committed`` records (what ``status`` reads after a restart) and the batch record's removal
follow here, on a thread of their own, while the worker retrains the next batch. Crash-safe
without waiting: the batch record stays in the journal until every committed record of its
requests is written, so a restart resumes the batch (``recovery.recover``), finds its commit
(``erasure.resume.finish_committed``) and writes the same records. A write the store refuses is
shown on the request's status (``pending``, ``"journal: <cause>"``) and retried until it lands.

Order: stage items are written first in, first out, and only then handed to registration
(``FollowUp.unregistered``), so the journal never holds a ``registered`` record before the
``committed`` one.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass

from expunge.orchestrator.service.followup import Committed, FollowUp
from expunge.orchestrator.service.journal import Journal
from expunge.shards.errors import ExpungeError

__all__ = ["JournalStage"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Item:
    committed: Committed
    batch_id: str


class JournalStage:
    """Writes committed records, then hands the commit to registration, then drops its batch record.

    Shares the service's condition ``state`` (it guards the board and ``FollowUp.unregistered``).
    """

    def __init__(self, follow: FollowUp, journal: Journal, state: threading.Condition) -> None:
        self._follow = follow
        self._journal = journal
        self._state = state
        self._items: collections.deque[_Item] = collections.deque()
        self._busy = 0  # requests of the item taken, being written (negative: handed to registration)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="expunge-journal", daemon=True)
        self._thread.start()

    def put(self, committed: Committed, batch_id: str) -> None:
        """Journal ``committed`` (its requests already answered) after every commit before it."""
        with self._state:
            self._items.append(_Item(committed, batch_id))
            self._state.notify_all()

    def backlog(self) -> int:
        """Requests committed whose journal records are not written yet (the caller holds ``state``)."""
        return sum(len(i.committed.receipts) for i in self._items) + max(self._busy, 0)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every commit put so far is journalled; False if ``timeout`` seconds passed first."""
        with self._state:
            return self._state.wait_for(lambda: not self._items and not self._busy, timeout)

    def close(self, timeout: float) -> None:
        """Write what was put (a stopping service gives up a failing write: the next start redoes it), then stop."""
        with self._state:
            self._closed = True
            self._state.notify_all()
        self._thread.join(timeout=timeout)

    def _next(self) -> _Item | None:
        with self._state:
            while not self._items:
                if self._closed:
                    return None
                self._state.wait()
            self._busy = len(self._items[0].committed.receipts)
            return self._items.popleft()

    def _run(self) -> None:
        while (item := self._next()) is not None:
            try:
                self._write(item)
            except Exception:  # the thread must outlive a bug in one item; its batch record stays (resumed)
                log.exception("journalling commit %s hit an unexpected error", item.batch_id)
            finally:
                with self._state:
                    self._busy = 0
                    self._state.notify_all()

    def _write(self, item: _Item) -> None:
        receipts = item.committed.receipts
        unjournalled = self._follow.journal_committed(receipts)
        if unjournalled:
            with self._state:
                for own in receipts:
                    cause = unjournalled.get(own.request_id)
                    now = self._follow.board.recent(own.request_id)
                    if cause is not None and now is not None:
                        pending = (*now.pending, f"journal: {cause}")
                        self._follow.board.remember(now.model_copy(update={"pending": pending}))
                self._state.notify_all()
            if not self._follow.journal_again(receipts, unjournalled):  # until written; clears the pending
                return  # the service stops first: the batch record stays, the next start resumes it
        with self._state:
            self._follow.unregistered.append(item.committed)
            self._busy = -self._busy  # counted there now (``FollowUp.pending``), not twice while its batch record goes
            self._state.notify_all()
        try:
            self._journal.drop_batch(item.batch_id)
        except ExpungeError as exc:  # its requests are journalled as committed: the next start drops it
            log.warning("could not drop journal batch %s: %s", item.batch_id, exc)
