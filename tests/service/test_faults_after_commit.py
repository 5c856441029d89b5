"""S3 misbehaving around a service erasure, through a fault proxy in front of a real S3 API server (issue 18).

After the store commit a request is never reported failed: a refused purge or a dropped journal
write is shown pending, retried with backoff, and finished without a restart. Before the commit,
a store write that cannot be made fails the call with a typed error, never a hang.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from expunge.orchestrator.catalog import Catalog
from expunge.orchestrator.config import (
    JobConfig,
    ServiceConfig,
    StorageConfig,
    SyntheticRatingsConfig,
    TrackingConfig,
)
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.errors import StorageUnavailableError
from expunge.orchestrator.service.core import ErasureService
from expunge.orchestrator.service.journal import Journal, RequestStatus
from expunge.pipelines.datasets import synthetic_ratings
from expunge.pipelines.fault_proxy import FaultProxy, FaultSchedule
from expunge.shards.rows import SUBJECT_ID
from expunge.shards.store import ObjectStore
from tests.engine import job, until

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=24, items=12, ratings_per_user=5, seed=8))
SUBJECTS = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))
_BOUND_S = 120  # a bound on waiting for a retry, not a speed target


@pytest.fixture
def proxy(s3_server: str) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server, FaultSchedule()) as running:
        yield running


@pytest.fixture
def config(proxy: FaultProxy, s3_versioned_bucket: str, hasher) -> JobConfig:
    storage = StorageConfig(uri=f"s3://{s3_versioned_bucket}/store", endpoint_url=proxy.url, timeout_s=2)
    config = job(shards=2, slices=2).model_copy(
        update={"storage": storage, "tracking": TrackingConfig(enabled=False), "service": ServiceConfig(window_ms=0)}
    )
    Coordinator(storage, hasher, pool_factory=local_pool).train(ROWS, config)
    return config


def _until(check, what: str):
    return until(check, what, _BOUND_S, poll_s=0.2)


def _unreferenced_data(storage: StorageConfig) -> list[str]:
    """Stored data object versions (slices, checkpoints, placement) the published version does not use."""
    store = ObjectStore(storage)
    catalog = Catalog(store)
    used = catalog.referenced_keys(catalog.latest())
    stored = store.list_versions("shards/") + store.list_versions("placement/")
    return sorted(
        str(v)
        for v in stored
        if v.key not in used and ("/slices/" in v.key or "/checkpoints/" in v.key or v.key.startswith("placement/"))
    )


def test_refused_version_deletes_leave_the_request_committed_and_the_purge_is_retried(config, proxy, hasher):
    service = ErasureService(config, hasher, None, pool_factory=local_pool, warm=False)
    try:
        proxy.set_schedule(FaultSchedule(rates={"refuse_delete": 1.0}))  # a policy denying s3:DeleteObjectVersion
        receipt = service.forget([SUBJECTS[0]], timeout=_BOUND_S)
        assert receipt.status == "erased"  # the commit happened: never "failed, nothing erased"
        assert receipt.rows_removed > 0
        assert receipt.pending[0].startswith("purge: ")
        status = service.status(receipt.request_id)
        assert status.state.startswith("purge pending (retrying: ")
        assert service.stats().pending_purges == 1
        assert "AccessDenied" in (service.stats().pending_cause or "")
        assert _unreferenced_data(config.storage)  # the superseded slices are still stored, for now
        assert proxy.injected.get("refuse_delete", 0) >= 1

        proxy.pause()  # the policy is lifted: the retry finishes the purge without a restart
        done: RequestStatus = _until(
            lambda: (s := service.status(receipt.request_id)).pending == () and s, "purge retried"
        )
        assert done.state in ("committed", "done")
        assert _unreferenced_data(config.storage) == []
        assert service.stats().pending_purges == 0
        journal = _until(lambda: Journal(ObjectStore(config.storage)).status(receipt.request_id), "journal")
        _until(lambda: Journal(ObjectStore(config.storage)).status(receipt.request_id).pending == (), "journal purged")
        assert journal.stage in ("committed", "registered")
    finally:
        service.close()


def test_a_dropped_journal_write_after_the_commit_is_answered_and_retried(config, proxy, hasher):
    service = ErasureService(config, hasher, None, pool_factory=local_pool, warm=False)
    try:
        # Every write of a committed record is cut; the request is answered all the same.
        proxy.set_schedule(
            FaultSchedule(rates={"cut": 1.0}, methods=frozenset({"PUT"}), path_pattern="journal/committed/")
        )
        request_id = service.submit([SUBJECTS[1]])
        # Answered at the commit; the journal stage writes the record beside the next batch, and
        # shows the refused write on the status while it retries (registration waits for it).
        status = _until(
            lambda: (
                (s := service.status(request_id)).stage == "committed"
                and any(p.startswith("journal: ") for p in s.pending)
                and s
            ),
            "journal write shown pending",
        )
        assert status.receipt is not None
        assert status.receipt.status == "erased"
        assert request_id not in Journal(ObjectStore(config.storage)).ids("committed")  # not yet written
        proxy.pause()
        _until(lambda: request_id in Journal(ObjectStore(config.storage)).ids("committed"), "journal retried")
        _until(lambda: service.status(request_id).pending == (), "pending cleared")
        assert proxy.injected.get("cut", 0) >= 1
    finally:
        service.close()


def test_a_coalesced_request_answered_before_its_journal_record_reads_committed_from_the_store(config, proxy, hasher):
    # The journal stage writes committed records after the answer; until it does (here: never, the
    # writes are cut), the store's own reading of the request (status after a restart, `verify`)
    # finds its batch's sealed commit, with the request's own subjects and rows.
    slow = config.model_copy(update={"service": ServiceConfig(window_ms=2000)})
    service = ErasureService(slow, hasher, None, pool_factory=local_pool, warm=False)
    try:
        proxy.set_schedule(
            FaultSchedule(rates={"cut": 1.0}, methods=frozenset({"PUT"}), path_pattern="journal/committed/")
        )
        first, second = service.submit([SUBJECTS[2]]), service.submit([SUBJECTS[3]])
        answered = [service.wait(r, "committed", timeout=_BOUND_S) for r in (first, second)]
        assert answered[0].receipt.batch_id is not None  # coalesced: the chain holds the batch, not the request
        stored = Journal(ObjectStore(config.storage)).status(second)
        assert stored.stage == "committed"
        assert stored.receipt.subject_digests == (hasher.digest(SUBJECTS[3]),)
        assert stored.receipt.batch_id == answered[1].receipt.batch_id
        assert stored.receipt.rows_removed == answered[1].receipt.rows_removed > 0
        # Registration follows the journal record: nothing registers what the journal has not recorded.
        assert service.status(second).stage == "committed"
        proxy.pause()
        _until(lambda: Journal(ObjectStore(config.storage)).ids("committed") >= {first, second}, "journal retried")
    finally:
        service.close()


def test_an_unwritable_journal_fails_submit_with_a_typed_error_and_no_acknowledgement(config, proxy, hasher):
    service = ErasureService(config, hasher, None, pool_factory=local_pool, warm=False)
    try:
        proxy.set_schedule(FaultSchedule(rates={"error_503": 1.0}, path_pattern="journal/requests/"))
        with pytest.raises(StorageUnavailableError, match="nothing was changed"):
            service.submit([SUBJECTS[2]], idempotency_key="T-1")
        assert service.stats().accepted == 0
        proxy.pause()
        request_id = service.submit([SUBJECTS[2]], idempotency_key="T-1")  # the retry is accepted once
        assert service.wait(request_id, "committed", timeout=_BOUND_S).receipt.status == "erased"
    finally:
        service.close()


def test_a_submit_whose_answer_was_lost_after_its_journal_write_is_processed_on_retry(config, proxy, hasher):
    # The journal write lands, the answer is cut: the caller sees an error and retries with its key.
    # The retry must get the request processed now, not when the service next restarts.
    service = ErasureService(config, hasher, None, pool_factory=local_pool, warm=False)
    try:
        proxy.set_schedule(
            FaultSchedule(rates={"cut_after": 1.0}, methods=frozenset({"PUT"}), path_pattern="journal/requests/")
        )
        with pytest.raises(StorageUnavailableError):
            service.submit([SUBJECTS[3]], idempotency_key="T-2")
        proxy.pause()
        assert Journal(ObjectStore(config.storage)).status(service.submit([SUBJECTS[3]], idempotency_key="T-2"))
        request_id = service.submit([SUBJECTS[3]], idempotency_key="T-2")
        assert service.wait(request_id, "committed", timeout=_BOUND_S).receipt.status == "erased"
        assert service.stats().batches == 1  # queued once, though submitted three times
    finally:
        service.close()
