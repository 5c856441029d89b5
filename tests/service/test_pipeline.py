"""The service's pipeline (issue 22): batch N+1 retrains while batch N is purged and sealed; exact, in order.

In-process (local shards) with an ``item_stats`` model, whose served model comes from summed
statistics, not from the shard actors. Nothing here is timed: the tests show that the batch
started ahead is the one committed, in commit order, with the bits of training from scratch, and
that a started retrain nobody commits leaves nothing behind.
"""

from __future__ import annotations

import collections
import threading

from expunge.orchestrator.catalog import Catalog
from expunge.orchestrator.config import (
    ItemStatsConfig,
    JobConfig,
    ServiceConfig,
    StorageConfig,
    SyntheticRatingsConfig,
    TrackingConfig,
)
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.erasure.prefetch import discard_prefetch
from expunge.orchestrator.errors import StorageUnavailableError
from expunge.orchestrator.evidence.exactness import constituents_equal
from expunge.orchestrator.evidence.receipt_chain import chained_receipts
from expunge.orchestrator.receipts import utc_now
from expunge.orchestrator.service.core import ErasureService
from expunge.orchestrator.service.intake import Queued
from expunge.orchestrator.service.journal import BatchEntry, Journal, JournalEntry
from expunge.orchestrator.service.pipeline import Ahead, NextBatch
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from expunge.shards.store import ObjectStore
from tests.engine import from_scratch, job, without

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=40, items=20, ratings_per_user=5, seed=11))
SUBJECTS = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))
STATS = ItemStatsConfig(factors=2, neighbours=5)


def _job(path, pipeline: bool = True) -> JobConfig:
    return job(model=STATS, shards=3, slices=2).model_copy(
        update={
            "storage": StorageConfig(uri=str(path / "store")),
            "tracking": TrackingConfig(enabled=False),
            # One subject per batch, so that requests queued behind a commit make batches of their own.
            "service": ServiceConfig(window_ms=0, max_subjects_per_batch=1, pipeline=pipeline),
        }
    )


def _unreferenced_data(storage: StorageConfig) -> list[str]:
    store = ObjectStore(storage)
    catalog = Catalog(store)
    used = catalog.referenced_keys(catalog.latest())
    return sorted(
        str(v)
        for v in store.list_versions("shards/") + store.list_versions("placement/")
        if v.key not in used and ("/slices/" in v.key or "/checkpoints/" in v.key or v.key.startswith("placement/"))
    )


def _queued_behind_the_first_commit(service: ErasureService, subjects: list[str]) -> list[str]:
    """Submit ``subjects`` one per request while the worker waits for the coordinator: all queue behind the first."""
    with service._work:  # the worker takes the first request, then waits here; the rest queue meanwhile
        return [service.submit([s]) for s in subjects]


def test_the_next_batch_retrains_during_the_commit_before_it_and_the_result_is_exact(tmp_path, hasher):
    config = _job(tmp_path)
    Coordinator(config.storage, hasher, None, pool_factory=local_pool).train(ROWS, config)
    service = ErasureService(config, hasher, None, pool_factory=local_pool, warm=False)
    chosen = SUBJECTS[:4]
    try:
        ids = _queued_behind_the_first_commit(service, chosen)
        receipts = [service.wait(i, "committed", timeout=120).receipt for i in ids]
        assert service.stats().batches_ahead >= 1  # at least one batch began at the commit before it
        # In commit order: each request committed once, one version after another, sealed once.
        versions = [r.model_version_after for r in receipts]
        assert versions == sorted(versions)
        assert len(set(versions)) == len(ids)
        store = ObjectStore(config.storage)
        assert all(len(chained_receipts(store, r.request_id)) == 1 for r in receipts)
        assert all(r.status == "erased" and r.rows_removed > 0 for r in receipts)
        reference = from_scratch(tmp_path, service.coordinator, without(ROWS, chosen), config, hasher)
        equal = constituents_equal(service.coordinator.constituent_tensors(), reference.constituent_tensors())
        assert all(equal.values()), equal
        assert _unreferenced_data(config.storage) == []  # every superseded object purged
    finally:
        service.close()


def test_without_the_pipeline_no_batch_starts_ahead(tmp_path, hasher):
    config = _job(tmp_path, pipeline=False)
    Coordinator(config.storage, hasher, None, pool_factory=local_pool).train(ROWS, config)
    service = ErasureService(config, hasher, None, pool_factory=local_pool, warm=False)
    try:
        ids = _queued_behind_the_first_commit(service, SUBJECTS[4:7])
        assert all(service.wait(i, "committed", timeout=120).receipt.status == "erased" for i in ids)
        assert service.stats().batches_ahead == 0
    finally:
        service.close()


def test_a_retrain_started_for_other_subjects_is_discarded_and_leaves_nothing(tmp_path, hasher):
    config = _job(tmp_path)
    coordinator = Coordinator(config.storage, hasher, None, pool_factory=local_pool)
    coordinator.train(ROWS, config)
    digests = [hasher.digest(SUBJECTS[8])]
    with coordinator.erasure.session.lease.hold("test"):
        started = coordinator.erasure.prefetch(digests, "req-started-ahead")
    assert started is not None
    # The request that commits names someone else: the early retrain must not be published or kept.
    receipt = coordinator.forget_digests(
        [hasher.digest(SUBJECTS[9])], "req-committed", register=False, prefetched=started
    )
    assert started.taken
    assert receipt.subject_digests == (hasher.digest(SUBJECTS[9]),)
    reference = from_scratch(tmp_path, coordinator, without(ROWS, [SUBJECTS[9]]), config, hasher)
    equal = constituents_equal(coordinator.constituent_tensors(), reference.constituent_tensors())
    assert all(equal.values()), equal  # SUBJECTS[8] is still in: the discarded retrain left no trace
    assert _unreferenced_data(config.storage) == []


def test_a_batch_journal_that_cannot_be_written_before_a_stop_undoes_its_started_retrain(tmp_path, hasher):
    """The next batch's shards start retraining before its record is written (issue 22, sixth pass).

    When that record cannot be written before the service stops, the early retrain is undone and
    the requests wait in the queue, in order: nothing published, nothing written left behind.
    """
    config = _job(tmp_path)
    coordinator = Coordinator(config.storage, hasher, None, pool_factory=local_pool)
    coordinator.train(ROWS, config)
    before = coordinator.require_manifest().version
    journal = Journal(ObjectStore(config.storage))
    refused: list[str] = []

    def refuse(batch: BatchEntry) -> None:
        refused.append(batch.batch_id)
        raise StorageUnavailableError("the store does not answer (test)")

    journal.write_batch = refuse  # type: ignore[method-assign]
    entries = [
        JournalEntry(request_id=f"req-{i}", subject_digests=(hasher.digest(s),), received_at=utc_now())
        for i, s in enumerate(SUBJECTS[10:12])
    ]
    queue = collections.deque(Queued(e, 0.0) for e in entries)
    started = collections.Counter[str]()
    ahead = NextBatch(
        coordinator,
        journal,
        threading.Condition(),
        queue,
        resuming=lambda: False,
        stopped=lambda: bool(refused),  # stops at the first refusal
        max_subjects=1,
        counts=started,
    )
    with coordinator.erasure.session.lease.hold("test"):
        ahead.start()  # returns at once: the record is written on the journal thread
        assert ahead.take() is None  # waits for that write, which the stop ended
    assert refused == ["req-0"]
    assert [q.entry.request_id for q in queue] == ["req-0", "req-1"]  # back in line, in order
    assert coordinator.require_manifest().version == before
    reference = from_scratch(tmp_path, coordinator, ROWS, config, hasher)
    equal = constituents_equal(coordinator.constituent_tensors(), reference.constituent_tensors())
    assert all(equal.values()), equal  # the actors are back on the published version
    assert _unreferenced_data(config.storage) == []  # what the early retrain wrote is deleted


def test_a_batch_started_ahead_is_handed_over_only_once_its_record_is_durable(tmp_path, hasher):
    config = _job(tmp_path)
    coordinator = Coordinator(config.storage, hasher, None, pool_factory=local_pool)
    coordinator.train(ROWS, config)
    journal = Journal(ObjectStore(config.storage))
    write, release = journal.write_batch, threading.Event()

    def slow(batch: BatchEntry) -> None:
        release.wait()
        write(batch)

    journal.write_batch = slow  # type: ignore[method-assign]
    entry = JournalEntry(request_id="req-ahead", subject_digests=(hasher.digest(SUBJECTS[12]),), received_at=utc_now())
    state = threading.Condition()
    ahead = NextBatch(
        coordinator,
        journal,
        state,
        collections.deque([Queued(entry, 0.0)]),
        resuming=lambda: False,
        stopped=lambda: False,
        max_subjects=1,
        counts=collections.Counter(),
    )
    handed: list[object] = []

    def worker() -> None:
        with state:  # as the commit worker calls it: holding the service's state
            handed.append(ahead.take())

    with coordinator.erasure.session.lease.hold("test"):
        ahead.start()
        taker = threading.Thread(target=worker)
        taker.start()
        taker.join(timeout=0.5)
        assert taker.is_alive()  # still waiting for the record
        assert journal.batches() == []
        assert state.acquire(timeout=30)  # the wait released the state: submitters are not held up
        state.release()
        release.set()
        taker.join(timeout=60)
    assert not taker.is_alive()
    (taken,) = handed
    assert isinstance(taken, Ahead)
    assert taken.batch.batch_id == "req-ahead"
    assert [b.batch_id for b in journal.batches()] == ["req-ahead"]
    assert taken.prefetched is not None
    with coordinator.erasure.session.lease.hold("test"):  # nobody commits it here: its retrain undone
        discard_prefetch(coordinator.erasure.session, taken.prefetched, coordinator.manifest)
    ahead.discard()


def test_a_bug_writing_the_batch_record_puts_the_requests_back_in_line(tmp_path, hasher):
    """Without the pipeline the worker takes the requests from its queue, then journals their batch.

    A bug in that write (not a failure of circumstance, which is retried inside) left them accepted
    in the journal but out of the queue: nothing committed them until the service restarted. Now
    they go back to the head of the queue, and the worker takes them again after its pause.
    """
    config = _job(tmp_path, pipeline=False)
    Coordinator(config.storage, hasher, None, pool_factory=local_pool).train(ROWS, config)
    service = ErasureService(config, hasher, None, pool_factory=local_pool)
    write, raised = service.journal.write_batch, []

    def buggy(batch: BatchEntry) -> None:
        if not raised:
            raised.append(batch.batch_id)
            raise RuntimeError("a bug in the batch record's write (test)")
        write(batch)

    service.journal.write_batch = buggy  # type: ignore[method-assign]
    try:
        receipt = service.forget([SUBJECTS[3]], timeout=120)
    finally:
        service.close()
    assert len(raised) == 1
    assert receipt.status == "erased"
