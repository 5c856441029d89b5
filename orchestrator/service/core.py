"""The erasure service: a warm coordinator that journals, coalesces, commits and registers requests.

A plain class (the Ray actor in ``expunge.orchestrator.service.actor`` only wraps it), so tests drive
it in-process with ``local_pool``. Four threads, each stage overlapping the others:

1. *accept* (caller's thread): identity rule, limits, journal entry written, then acknowledged;
2. *commit* (worker, as ``policy.next_step`` decides): the oldest waiting requests, coalesced within
   ``service.window_ms``, are erased in one retrain per affected shard; once the store commit is
   published and sealed the live shard actors serve it and each request is answered (``committed``);
   its journal records follow beside the next batch (``JournalStage``, in commit order);
3. *ready* (``Readiness``): a statistics model's exact solve of the new version starts at once and
   is swapped in whole; the previous one serves meanwhile, its erased subjects masked;
4. *register* (``Registrar``, its own thread): MLflow gets the newest version and every earlier
   one is purged (``Coordinator.register_published``); each request covered is journalled.

Source of the method: SISA training and unlearning, Bourtoule et al., "Machine Unlearning",
IEEE S&P 2021 (one retrain per affected shard from its first affected slice).
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pyarrow as pa

from expunge.orchestrator.config import JobConfig
from expunge.orchestrator.coordinator import Coordinator, PoolFactory, ray_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.erasure.prefetch import Prefetch
from expunge.orchestrator.erasure.resume import erased_rows
from expunge.orchestrator.errors import ExpungeError, IdempotencyConflictError, StoreBusyError
from expunge.orchestrator.receipts import ErasureReceipt, IngestReceipt, utc_now
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.screening import screen_free_text
from expunge.orchestrator.service import policy
from expunge.orchestrator.service.board import RequestBoard
from expunge.orchestrator.service.followup import Committed, FollowUp
from expunge.orchestrator.service.ingestion import ServiceIngestion
from expunge.orchestrator.service.intake import Queued, new_entry, ticket_label
from expunge.orchestrator.service.journal import BatchEntry, Journal, JournalEntry, RequestStatus
from expunge.orchestrator.service.journal_stage import JournalStage
from expunge.orchestrator.service.lifecycle import Lifecycle
from expunge.orchestrator.service.pipeline import NextBatch, open_taken, take_queued
from expunge.orchestrator.service.placement_rows import PlacementRows
from expunge.orchestrator.service.readiness import Readiness
from expunge.orchestrator.service.recovery import recover, serve_purpose
from expunge.orchestrator.service.registrar import Registrar
from expunge.orchestrator.service.views import ServedVersion, ServiceStats
from expunge.shards.identity import canonical_subject_ids

__all__ = ["ErasureService", "ServedVersion", "ServiceStats"]

log = logging.getLogger(__name__)


class ErasureService:
    """A long-lived coordinator for one store: ``submit``/``forget``, ``status``/``wait``, serving.

    Thread-safe: callers may use it from many threads (the Ray actor runs calls concurrently).
    """

    def __init__(
        self,
        job: JobConfig,
        hasher: SubjectHasher,
        lineage: Lineage | None,
        pool_factory: PoolFactory = ray_pool,
        warm: bool = True,
        lease_wait_s: float = 0.0,
    ) -> None:
        self.job = job
        self.config = job.service
        self.hasher = hasher
        self.lineage = lineage
        # Opening the coordinator finishes a crashed commit's purge and registers what MLflow missed.
        self.coordinator = Coordinator(job.storage, hasher, lineage, pool_factory, job.evidence)
        self.coordinator.require_manifest()  # a service needs a trained store
        # One writer per store: the service holds the write lease for its whole life.
        self._lease = self.coordinator.session.lease
        # A restarted service waits for the lease (a CLI job may hold it); then finishes what a crash left.
        self._lease.acquire(serve_purpose(job.service.namespace), wait_s=lease_wait_s)
        try:
            self.coordinator.follow_latest()
            self.coordinator.erasure.finish_interrupted()
            self._start(warm)
        except BaseException:
            self._lease.release()
            raise

    def _start(self, warm: bool) -> None:
        self.journal = Journal(self.coordinator.store)
        self._work = threading.Lock()  # the coordinator: commits, registration and serving, one at a time
        self._state = threading.Condition()  # everything below
        self._queue: collections.deque[Queued] = collections.deque()
        self._resume: list[tuple[BatchEntry, list[JournalEntry]]] = []
        self.board = RequestBoard(self.journal, self._state, self.coordinator.store.uri)
        self.lifecycle = Lifecycle(self.journal, self.hasher, self.board)
        self._counts = collections.Counter[str]()
        self._rows = PlacementRows()  # each subject's rows, for the receipts; carried over this service's erasures
        #: Request ids this process queued, resumed or found finished: a retried submit of any other
        #: id the journal holds as accepted was never acknowledged, and is queued by that retry.
        self._known: set[str] = set()
        shared = (self._state, self._work, self._counts, self._stopped)  # the locks, counters and stop flag
        self.follow = FollowUp(self.coordinator, self.lineage, self.journal, self.board, *shared)
        self.ingestion = ServiceIngestion(self.job, self.follow, self._state, self._work, self._stopped)
        self._stopping = False
        self._waiting: str | None = None  # ``ServiceStats.waiting_cause``
        self._recover()
        self.readiness = Readiness(
            self.coordinator.store, self.coordinator.require_manifest(), self.board, self._state,
            niceness=self.config.ready_niceness,
        )  # fmt: skip
        self.ingestion.readiness = self.readiness
        self.journaling = JournalStage(self.follow, self.journal, self._state)
        self.next_batch = NextBatch(
            self.coordinator, self.journal, self._state, self._queue, lambda: bool(self._resume), self._stopped,
            self.config.max_subjects_per_batch, self._counts,
        )  # fmt: skip
        gate = self.readiness.gate  # the registration yields to the ready solve's GIL-bound phases
        self.registrar = Registrar(self.follow, self._state, self.config, self._queued, self._stopped, gate)
        self.registrar.start()
        if warm:
            manifest = self.coordinator.require_manifest()
            # Start every shard actor now: requests should not pay for process spawn and imports.
            self.coordinator.pool.call("ready", {s: () for s in range(manifest.sharding.shards)})
        self._worker = threading.Thread(target=self._run, name="expunge-service", daemon=True)
        self._worker.start()

    # ----- requests -------------------------------------------------------------------------------
    def submit(
        self,
        subject_ids: Sequence[object],
        idempotency_key: str | None = None,
        reason: str | None = None,
        ticket: str | None = None,
        received_at: str | None = None,
    ) -> str:
        """Journal an erasure request and return its id once it is durable (before any retrain).

        The same ``idempotency_key`` always returns the same request id (and, later, receipt).
        ``ticket``: the caller's reference, findable later (``Lifecycle.find``). ``received_at``:
        when the controller received it (backlog imports; default now), which starts its clock.

        Raises:
            ConfigError: no subject, more than ``service.max_subjects_per_request``, a bad
                idempotency key, reason, ticket or receipt date.
            IdempotencyConflictError: the key is already used for other subjects.
            PersonalDataInTextError: the reason or ticket names a subject, an e-mail or a phone number.
            InvalidSubjectIdError: an id the identity rule refuses (``expunge.shards.identity``).
        """
        entry = new_entry(
            self.hasher, self.config, subject_ids, idempotency_key, reason, ticket, received_at, utc_now()
        )
        request_id, digests = entry.request_id, entry.subject_digests
        stored = self.journal.accept(entry)
        if stored is not None and set(stored.subject_digests) != set(digests):
            raise IdempotencyConflictError(
                f"idempotency key already used by request {request_id} for other subjects; "
                "use a new key for a new request"
            )
        filed = stored or entry  # the stored request's own ticket (a retry's is ignored); rewritten by a retry
        if filed.ticket is not None:  # after a crash between the accept and this write
            self.journal.write_ticket(ticket_label(self.hasher, filed.ticket), request_id)
        if stored is not None:
            with self._state:
                if request_id in self._known:
                    return request_id  # a retry: the first submission is (or was) being processed
            status = self.journal.status(request_id)
            if status is None or status.stage != "accepted":
                return request_id  # finished (committed or failed) before this process started
            # Durable but never acknowledged: the first attempt's answer was lost after its journal
            # write landed. This retry acknowledges it, so it is queued now (not at the next start).
            entry = stored
        with self._state:
            if request_id in self._known:
                return request_id
            self._known.add(request_id)
            self._queue.append(Queued(entry, time.monotonic()))
            self._counts["accepted"] += 1
            self.board.remember(RequestStatus(request_id=request_id, stage="accepted", received_at=entry.received_at))
            self._state.notify_all()
        return request_id

    def forget(
        self,
        subject_ids: Sequence[object],
        idempotency_key: str | None = None,
        reason: str | None = None,
        timeout: float | None = None,
        ticket: str | None = None,
    ) -> ErasureReceipt:
        """``submit``, then wait until the erasure is committed and served; returns its receipt.

        Raises:
            ErasureWaitTimeout: not committed within ``timeout`` seconds (the request goes on).
            ExpungeError: the request failed (e.g. a corrupt store); nothing was changed.
        """
        request_id = self.submit(subject_ids, idempotency_key, reason, ticket)
        status = self.wait(request_id, "committed", timeout)
        assert status.receipt is not None
        return status.receipt

    def status(self, request_id: str) -> RequestStatus:
        """``RequestBoard.status`` of the request a request id, an idempotency key or a ticket names."""
        return self.board.status(self.lifecycle.find(request_id))

    def wait(
        self, request_id: str, stage: Literal["committed", "registered"] = "committed", timeout: float | None = None
    ) -> RequestStatus:
        """``RequestBoard.wait``: block until ``request_id`` reaches ``stage`` (or fails); returns its status."""
        return self.board.wait(request_id, stage, timeout)

    def readmit(self, subject_ids: Sequence[object], reason: str) -> int:
        """``Eraser.readmit`` under this service's lease: lift tombstones; returns how many were tombstoned."""
        ids = policy.check_subject_list(subject_ids)
        screen_free_text("reason", reason, canonical_subject_ids(ids, "the request"))
        with self._work:
            return self.coordinator.readmit(ids, reason)

    def ingest(self, rows: pa.Table, request_id: str | None = None) -> IngestReceipt:
        """``ServiceIngestion.ingest``: add new rows in this service's writer order; returns once served."""
        return self.ingestion.ingest(rows, request_id)

    # ----- serving ------------------------------------------------------------------------------
    def predict(self, rows: pa.Table) -> np.ndarray:
        """Ensemble predictions for canonical rows from the version the store publishes now."""
        served = self.readiness.served()
        if served is not None:  # a statistics model: the ready exact solve, no wait for a commit under way
            return self.coordinator.serving.predict_served(served, rows)
        with self._work:
            return self.coordinator.predict(rows)

    def recommend(self, subject_id: object, k: int = 10) -> list[int]:
        """Top-``k`` items the subject has not rated (``Coordinator.recommend``)."""
        served = self.readiness.served()
        if served is not None:
            return self.coordinator.serving.recommend_served(served, subject_id, k)
        with self._work:
            return self.coordinator.recommend(subject_id, k)

    def model_version(self) -> ServedVersion:
        """The store's newest ensemble version (``item_stats`` answers from its last solve, which may trail it)."""
        with self._work:
            manifest = self.coordinator.follow_latest()
        return ServedVersion(
            ensemble_version=manifest.version,
            registry_version=self.lineage.current_version() if self.lineage else None,
            model_name=self.lineage.tracking.model_name if self.lineage else None,
            shards=manifest.sharding.shards,
            slices=manifest.sharding.slices,
        )

    def stats(self) -> ServiceStats:
        """Counters of this service process (they start at zero with each process) and its peak RSS."""
        with self._state:
            counts = dict(self._counts)
            queued = len(self._queue)
            purges, unregistered, cause = self.follow.pending()
            journalling, journal_cause = self.journaling.pending()  # committed, on its way to registration
            latency = self.board.clock.snapshot()
            pending = unregistered + journalling
        return ServiceStats.of(counts, queued, purges, pending, journal_cause or cause, latency, self._waiting)

    def exact_solve_seconds(self) -> float:
        """``Readiness.exact_solve_seconds`` of the published version: the reference of ``ready_to_serve``."""
        return self.readiness.exact_solve_seconds(self.coordinator.require_manifest())

    def close(self) -> None:
        """Finish the batch in hand, then stop the worker and the shard actors.

        Queued requests and unregistered commits stay in the journal; the next service on this
        store finishes them (``_recover``), so stopping never waits for a backlog.
        """
        with self._state:
            self._stopping = True
            self._state.notify_all()
        self._worker.join(timeout=600)
        with self._work:
            self.next_batch.discard()  # a batch started ahead stays journalled: the next start resumes it
        self.journaling.close(timeout=600)
        self.registrar.join(timeout=600)
        self.readiness.close()
        with self._work:
            self.coordinator.close()
        self._lease.release()

    # ----- the worker -------------------------------------------------------------------------------
    def _run(self) -> None:
        window_s = self.config.window_ms / 1000
        while True:
            with self._state:
                if self._stopping:
                    return  # what is queued or unregistered stays in the journal: the next start finishes it
                prefetched, repair = None, None
                if (ahead := self.next_batch.take()) is not None:  # started at the last commit: first
                    batch, entries, prefetched, step_kind = ahead.batch, ahead.entries, ahead.prefetched, "commit"
                elif self._resume:
                    batch, entries = self._resume.pop(0)
                    step_kind = "resume"
                elif (repair := None if self._queue else self.follow.repairs.take_due(time.monotonic())) is not None:
                    step_kind = "repair"
                elif self.ingestion.due(self._queue[0].since if self._queue else None):
                    step_kind = "ingest"
                else:
                    clock = time.monotonic()
                    step = policy.next_step(
                        len(self._queue),
                        clock - self._queue[0].since if self._queue else 0.0,
                        0,  # registration is the Registrar's, on its own thread
                        0.0,
                        window_s,
                        self.config.register_within_s,
                    )
                    if step.kind == "wait":
                        due = self.follow.repairs.wait_s(clock)
                        waits = [w for w in (step.wait_s, due) if w is not None]
                        self._state.wait(timeout=min(waits) if waits else None)
                        continue
                    step_kind = step.kind
                    if step_kind == "commit":
                        taken = take_queued(self._queue, self.config.max_subjects_per_batch)
                        entries, batch = [q.entry for q in taken], None
            try:
                if step_kind == "commit" and batch is None:  # a bug puts the taken requests back in line
                    batch = open_taken(self.journal, taken, self._queue, self._state, self._stopped)
                if step_kind in ("resume", "commit") and batch is not None:  # None: stopping, still journalled
                    self._commit(entries, batch, resume=step_kind == "resume", prefetched=prefetched)
                elif step_kind == "repair" and repair is not None:
                    self.follow.repair(repair)
                elif step_kind == "ingest":
                    self.ingestion.run_next()
            except Exception:  # the worker must outlive any one batch; the batch is failed or requeued
                log.exception("the erasure service's worker hit an unexpected error; it goes on")
                time.sleep(policy.RETRY_PAUSE_S)

    def _commit(
        self, entries: list[JournalEntry], batch: BatchEntry, resume: bool, prefetched: Prefetch | None = None
    ) -> None:
        # A resumed batch names every subject it was started with, even of requests already answered:
        # its commit (under the batch id) erased them all.
        members = [e for r in batch.request_ids if (e := self.journal.entry(r)) is not None] if resume else entries
        digests = list(dict.fromkeys(d for e in members for d in e.subject_digests))
        joining, joined = self.ingestion.take() if not resume and prefetched is None else None, False  # 1 retrain/shard
        try:
            for attempt in itertools.count(1):
                try:
                    with self._work:
                        self.coordinator.follow_latest()
                        acted_on = self.coordinator.require_manifest().version
                        rows = self._rows.at(self.coordinator, acted_on)
                        ticket, reason = policy.batch_text(members)
                        receipt = self.coordinator.forget_digests(
                            digests,
                            batch.batch_id,
                            register=False,
                            resume=resume or attempt > 1,
                            ticket=ticket,
                            reason=reason,
                            ingest=self.ingestion.prepare(joining, digests) if attempt == 1 else None,
                            prefetched=prefetched if attempt == 1 else None,
                            after_commit=self.next_batch.start
                            if self.config.pipeline and self.readiness.fits
                            else None,
                        )
                        if receipt.status == "erased" and receipt.model_version_before != acted_on:
                            # Committed before a crash or a lost answer: the rows each subject had come from
                            # the durable record of that commit, as a run without the crash counted them.
                            catalog = self.coordinator.catalog
                            rows = erased_rows(catalog, catalog.read(receipt.model_version_after or 0))
                    break
                except policy.RETRYABLE as exc:  # a lapsed lease is taken back first
                    if (pause := policy.retry_pause(attempt, exc)) is None:
                        self.follow.fail(entries, batch, exc)
                        return
                    log.warning(
                        "batch %s: %s; trying again in %.0f s (attempt %d)", batch.batch_id, exc, pause, attempt
                    )
                    with self._state:  # stopping meanwhile: it stays journalled, and the next start resumes it
                        self._waiting = f"{batch.batch_id}: {type(exc).__name__}: {exc}" if attempt >= 3 else None
                        if self._state.wait_for(lambda: self._stopping, timeout=pause):
                            return
                    if isinstance(exc, StoreBusyError):
                        self._lease.reacquire(serve_purpose(self.config.namespace))
                except ExpungeError as exc:
                    self.follow.fail(entries, batch, exc)
                    return
            joined = receipt.status == "erased"  # nobody found: the batch did not join the commit
            if joined:  # the next commit's rows, without a read (unless an ingest joined or this resumed a commit)
                after = receipt.model_version_after if receipt.model_version_before == acted_on else None
                self._rows.erased(acted_on, after, digests, joined_ingest=joining is not None)
        finally:
            self._waiting = None
            if not joined:  # not committed with it: the ingest waits again, first in line
                self.ingestion.joined(joining)
        self.readiness.mask(self.coordinator.manifest, digests)  # before any status says so (joined or not)
        receipts = [policy.split_receipt(receipt, e, rows) for e in entries]
        with self._state:  # answered now; the journal's committed records follow on the journal stage
            self._counts["committed"] += len(entries)
            self._counts["batches"] += 1
            self._counts["shard_retrains"] += len(receipt.shards)
            for entry, own in zip(entries, receipts, strict=True):
                self.board.remember(
                    RequestStatus(
                        request_id=own.request_id,
                        stage="committed",
                        received_at=entry.received_at,
                        committed_at=own.committed_at,
                        receipt=own,
                        pending=own.pending,
                    )
                )
            if receipt.pending:
                self.follow.repairs.add(receipt, tuple(e.request_id for e in entries))
            self._state.notify_all()
        self.ingestion.joined(joining if joined else None)  # answered once the erasures' statuses say committed
        # No ingest joined and not resumed: a pure erasure, whose sum the ready solve makes without a shard read.
        ids, pure = [e.request_id for e in entries], joining is None and not resume
        self.readiness.committed(self.coordinator.manifest, ids, digests, receipt, pure)
        # Beside the next batch: committed records, then registration, then the batch record dropped.
        self.journaling.put(Committed(receipts, receipt, fresh=not resume), batch.batch_id)
        log.info("batch %s: %d request(s), %d subject(s), shards %s retrained, committed",
                 batch.batch_id, len(entries), len(digests), receipt.affected_shards)  # fmt: skip

    def _queued(self) -> tuple[int, float]:
        """Requests queued and how long the oldest has waited, in seconds (the caller holds ``state``)."""
        return len(self._queue), time.monotonic() - self._queue[0].since if self._queue else 0.0

    def _stopped(self) -> bool:
        with self._state:
            return self._stopping

    # ----- restart ----------------------------------------------------------------------------------
    def _recover(self) -> None:
        """Finish what a crash left open: batches that were running, queued requests, registrations."""
        plan = recover(self.journal, self.lineage)
        self._resume.extend(plan.resume)
        for entry in plan.queued:
            self._queue.append(Queued(entry, time.monotonic()))
        self._known.update([e.request_id for e in plan.queued], [e.request_id for _, es in plan.resume for e in es])
        self.follow.unregistered.extend(plan.unregistered)  # not-found batches: their MLflow runs
        for receipt in plan.repairs:
            self.follow.repairs.add(receipt, (receipt.request_id,))
