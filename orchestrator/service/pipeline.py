"""The service's pipeline: the next batch starts retraining right after the previous commit's publish.

Without it, batch N+1 waits until N is purged, sealed and answered. With it (``service.pipeline``,
for a model served from summed statistics), the moment N's new version is published
(``Eraser.forget_digests(..., after_commit=)``) the commit worker takes the next queued requests
as a batch and starts their shards retraining on that version (``Eraser.prefetch``); a thread of
its own writes the batch record meanwhile, and N's purge and seal run on the worker. N+1 commits
next with those results, once its record is durable (it must be before N+1 publishes).
Receipts stay in commit order: N+1 publishes only after N is answered. A model whose shard actors
serve predictions (MF) is not pipelined: its actors must never answer from a retrain that is not
committed.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from expunge.orchestrator.coordinator import Coordinator
from expunge.orchestrator.erasure.prefetch import Prefetch, discard_prefetch
from expunge.orchestrator.receipts import utc_now
from expunge.orchestrator.service.followup import durably
from expunge.orchestrator.service.intake import Queued
from expunge.orchestrator.service.journal import BatchEntry, Journal, JournalEntry
from expunge.orchestrator.service.policy import take_batch

__all__ = ["Ahead", "NextBatch", "journal_batch", "new_batch", "open_batch", "open_taken", "take_queued"]

log = logging.getLogger(__name__)


def take_queued(queue: collections.deque[Queued], max_subjects: int) -> list[Queued]:
    """The oldest queued requests that coalesce into one batch (``policy.take_batch``), removed from ``queue``."""
    size = take_batch([(q.entry.request_id, q.entry.subject_digests) for q in queue], max_subjects)
    return [queue.popleft() for _ in range(size)]


def new_batch(entries: list[JournalEntry]) -> BatchEntry:
    """The batch record of ``entries`` (not written): a request alone keeps its id, several share a new one."""
    batch_id = entries[0].request_id if len(entries) == 1 else f"batch-{uuid.uuid4().hex[:24]}"
    return BatchEntry(batch_id=batch_id, request_ids=tuple(e.request_id for e in entries), created_at=utc_now())


def journal_batch(journal: Journal, batch: BatchEntry, stopped: Callable[[], bool]) -> bool:
    """Write ``batch``'s record, retrying until it is durable (True) or the service stops (False).

    It must be durable before the batch's commit publishes: a crash from there on resumes the
    batch under its id, once (``recovery.recover``). Before the publish, a crash leaves its
    requests accepted in the journal (retried at the next start) and anything its shards wrote
    unreferenced (purged).
    """
    return durably(f"journal batch {batch.batch_id}", functools.partial(journal.write_batch, batch), stopped)


def open_batch(journal: Journal, entries: list[JournalEntry], stopped: Callable[[], bool]) -> BatchEntry | None:
    """Journal ``entries`` as one batch before anything retrains; None when the service stops first."""
    batch = new_batch(entries)
    return batch if journal_batch(journal, batch, stopped) else None


def open_taken(
    journal: Journal,
    taken: list[Queued],
    queue: collections.deque[Queued],
    state: threading.Condition,
    stopped: Callable[[], bool],
) -> BatchEntry | None:
    """``open_batch`` of the requests ``taken`` from ``queue``; if it raises (a bug: failures of
    circumstance are retried inside), they go back to the head of ``queue``, in order, before the
    error is raised again, so that the worker takes them again after its pause.
    """
    try:
        return open_batch(journal, [q.entry for q in taken], stopped)
    except Exception:
        with state:
            queue.extendleft(reversed(taken))
            state.notify_all()
        raise


@dataclass(frozen=True)
class Ahead:
    """A batch taken from the queue, its retrain started (``prefetched``: None if nobody was found).

    ``journalled``: its batch record's write, on the journal thread (True once durable, False when
    the service stopped first); ``taken``: the queue entries, put back if it never is.
    """

    entries: list[JournalEntry]
    batch: BatchEntry
    prefetched: Prefetch | None
    journalled: Future[bool]
    taken: list[Queued]


class NextBatch:
    """Holds at most one batch started ahead; the commit worker commits it before anything else.

    ``start`` is the ``after_commit`` hook (the worker's thread, holding the coordinator and the
    lease); ``queue``, ``resuming`` and ``stopped`` are the service's, read under ``state``. The
    batch record is written on a thread of its own, beside the previous batch's purge and seal;
    ``take`` waits for it, so that no batch publishes before its record is durable.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        journal: Journal,
        state: threading.Condition,
        queue: collections.deque[Queued],
        resuming: Callable[[], bool],
        stopped: Callable[[], bool],
        max_subjects: int,
        counts: collections.Counter[str],
    ) -> None:
        self._coordinator = coordinator
        self._journal = journal
        self._state = state
        self._queue = queue
        self._resuming = resuming
        self._stopped = stopped
        self._max_subjects = max_subjects
        self._ahead: Ahead | None = None
        self._counts = counts  # the service's counters: ``batches_ahead`` (``ErasureService.stats``)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="expunge-batch-journal")

    def start(self) -> None:
        """Take the oldest queued requests as the next batch and start their retrain now, if any wait."""
        with self._state:
            if self._ahead is not None or not self._queue or self._resuming() or self._stopped():
                return
            taken = take_queued(self._queue, self._max_subjects)
        entries = [q.entry for q in taken]
        batch = new_batch(entries)
        digests = list(dict.fromkeys(d for e in entries for d in e.subject_digests))
        try:  # the shards retrain (in their actors) while the journal thread writes the batch record
            prefetched = self._coordinator.erasure.prefetch(digests, batch.batch_id)
        except Exception as exc:  # e.g. the placement unreadable now: the batch commits the usual way
            log.warning("batch %s could not start ahead (%s); it retrains when its turn comes", batch.batch_id, exc)
            prefetched = None
        journalled = self._writer.submit(journal_batch, self._journal, batch, self._stopped)
        journalled.add_done_callback(self._written)
        self._ahead = Ahead(entries, batch, prefetched, journalled, taken)
        with self._state:
            self._counts["batches_ahead"] += 1

    def _written(self, _: Future[bool]) -> None:
        with self._state:  # wakes ``take``
            self._state.notify_all()

    def take(self) -> Ahead | None:
        """The batch started ahead (removed) once its record is durable, or None.

        Waits on ``state`` (the caller may hold it: the wait releases it). A record not written
        (the service stopped first, or a bug) undoes the early retrain and puts its requests back
        at the head of the queue; they stay accepted in the journal.
        """
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        with self._state:
            self._state.wait_for(ahead.journalled.done)
        try:
            if ahead.journalled.result():
                return ahead
        except Exception:
            log.exception("batch %s: its journal record was not written; it waits in the queue", ahead.batch.batch_id)
        if ahead.prefetched is not None:
            discard_prefetch(self._coordinator.erasure.session, ahead.prefetched, self._coordinator.manifest)
        with self._state:
            self._queue.extendleft(reversed(ahead.taken))
            self._state.notify_all()
        return None

    def discard(self) -> None:
        """Stopping: end the early retrain and undo it (its batch stays journalled; the next start resumes it)."""
        ahead = self.take()
        if ahead is not None and ahead.prefetched is not None:
            discard_prefetch(self._coordinator.erasure.session, ahead.prefetched, self._coordinator.manifest)
        self._writer.shutdown(wait=True)
