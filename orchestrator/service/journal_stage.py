"""The service's journal stage: each commit's journal records written beside the next commit, in commit order.

The commit worker answers a request as soon as its store commit is sealed; the journal's
``committed`` records (what ``status`` reads after a restart) and the batch record's removal
follow here, on a thread of their own, while the worker retrains the next batch. Crash-safe
without waiting: the batch record stays in the journal until every committed record of its
requests is written, so a restart resumes the batch (``recovery.recover``), finds its commit
(``erasure.resume.finish_committed``) and writes the same records. A write the store refuses is
shown on the request's status (``pending``, ``"journal: <cause>"``) and in ``stats().pending_cause``,
and retried until it lands; any other error in a commit's records (a bug) is shown there too and
that commit is tried again after a backoff, before any later one: never dropped.

Order: stage items are written first in, first out, and only then handed to registration
(``FollowUp.unregistered``), so the journal never holds a ``registered`` record before the
``committed`` one.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass

from expunge.orchestrator.service.followup import Committed, FollowUp, backoff_s
from expunge.orchestrator.service.journal import Journal

__all__ = ["JournalStage"]

log = logging.getLogger(__name__)


@dataclass
class _Item:
    committed: Committed
    batch_id: str
    handed: bool = False  # its committed records are written and it went to registration


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
        self._error: str | None = None  # why the oldest commit's records are not written yet (None: none failing)
        self._thread = threading.Thread(target=self._run, name="expunge-journal", daemon=True)
        self._thread.start()

    def put(self, committed: Committed, batch_id: str) -> None:
        """Journal ``committed`` (its requests already answered) after every commit before it."""
        with self._state:
            self._items.append(_Item(committed, batch_id))
            self._state.notify_all()

    def pending(self) -> tuple[int, str | None]:
        """Requests committed whose journal records are not written yet, and why the oldest is failing.

        The cause is None while nothing fails (the records are just on their way); the caller holds ``state``.
        """
        waiting = sum(len(i.committed.receipts) for i in self._items if not i.handed)
        return waiting + max(self._busy, 0), self._error

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
            item = self._items.popleft()
            self._busy = 0 if item.handed else len(item.committed.receipts)
            return item

    def _run(self) -> None:
        failures = 0
        while (item := self._next()) is not None:
            try:
                written = self._write(item)
            except Exception as exc:  # a bug in one commit's records: shown and tried again, never dropped
                failures += 1
                pause = backoff_s(failures)
                log.exception(
                    "journalling commit %s hit an unexpected error; trying again in %.1f s", item.batch_id, pause
                )
                with self._state:
                    self._error = f"journal: {type(exc).__name__}: {exc}"[:300]
                    self._busy = 0
                    if self._closed:  # a stopping service gives it up: its batch record stays, the next start redoes it
                        self._state.notify_all()
                        return
                    self._items.appendleft(item)  # first in, first out: before every later commit
                    self._state.notify_all()
                    self._state.wait_for(lambda: self._closed, pause)
                continue
            with self._state:
                self._busy = 0
                if written:
                    failures, self._error = 0, None
                self._state.notify_all()
            if not written:
                return  # the service stops first: the batch record stays, the next start resumes it

    def _write(self, item: _Item) -> bool:
        """Write ``item``'s records, hand it to registration, drop its batch record; False: the service stopped."""
        if not item.handed:
            receipts = item.committed.receipts
            unjournalled = self._follow.journal_committed(receipts)
            if unjournalled:
                with self._state:
                    self._error = f"journal: {next(iter(unjournalled.values()))}"
                    for own in receipts:
                        cause = unjournalled.get(own.request_id)
                        now = self._follow.board.recent(own.request_id)
                        if cause is not None and now is not None:
                            pending = (*now.pending, f"journal: {cause}")
                            self._follow.board.remember(now.model_copy(update={"pending": pending}))
                    self._state.notify_all()
                if not self._follow.journal_again(receipts, unjournalled):  # until written; clears the pending
                    return False
            with self._state:
                self._follow.unregistered.append(item.committed)
                item.handed, self._error = True, None  # its records are written: nothing fails now
                self._busy = (
                    -self._busy
                )  # counted there now (``FollowUp.pending``), not twice while its batch record goes
                self._state.notify_all()
        try:
            self._journal.drop_batch(item.batch_id)
        except Exception as exc:  # its requests are journalled and handed on: the next start drops it (never retried
            # here, which would hold back every later commit's records behind a record nobody needs)
            log.warning("could not drop journal batch %s: %s", item.batch_id, exc)
        return True
