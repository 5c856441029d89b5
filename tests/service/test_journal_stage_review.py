"""Review of the journal stage (commits answered at the seal, journal records written after): attacks that broke it.

Each test drives real components (a local or S3 store, the service, a process killed with
``os._exit``) into a state the lag between the answer and the journal records leaves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from expunge.orchestrator.config import JobConfig, ServiceConfig, StorageConfig, SyntheticRatingsConfig, TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.evidence.receipt_chain import chained_receipts
from expunge.orchestrator.service.core import ErasureService
from expunge.orchestrator.service.journal import Journal
from expunge.orchestrator.service.journal_stage import JournalStage
from expunge.pipelines.datasets import synthetic_ratings
from expunge.pipelines.fault_proxy import FaultProxy, FaultSchedule
from expunge.shards.rows import SUBJECT_ID
from expunge.shards.store import ObjectStore
from tests.conftest import TEST_KEY
from tests.engine import job, until

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=20, items=10, ratings_per_user=4, seed=5))
SUBJECTS = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))
ROOT = Path(__file__).resolve().parents[2]
_BOUND_S = 120  # a bound on waiting for a retry or a thread, not a speed target

_RUN = """
import sys
from expunge.orchestrator.config import JobConfig
from expunge.orchestrator.coordinator import local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.service.core import ErasureService
config = JobConfig.model_validate_json(sys.argv[1])
service = ErasureService(config, SubjectHasher(sys.argv[2].encode()), None, pool_factory=local_pool, warm=False)
request_id = service.submit(["nobody-here"], idempotency_key="K-missing")
print(service.wait(request_id, "committed", timeout=120).receipt.status, flush=True)
service.close()
"""


def _config(root: Path) -> JobConfig:
    return job(shards=2, slices=2).model_copy(
        update={
            "storage": StorageConfig(uri=str(root)),
            "tracking": TrackingConfig(enabled=False),
            "service": ServiceConfig(window_ms=0),
        }
    )


def _run(root: Path, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, _config(root).model_dump_json(), TEST_KEY.decode()],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def store_root(tmp_path: Path, hasher) -> Path:
    root = tmp_path / "store"
    config = _config(root)
    Coordinator(config.storage, hasher, pool_factory=local_pool).train(ROWS, config)
    return root


def test_a_not_found_batch_killed_before_its_journal_record_is_sealed_once(store_root, hasher):
    """Answered not_found at the seal, killed before the committed record: the restart must not seal it again."""
    killed = _run(
        store_root,
        _RUN,
        EXPUNGE_FAULT_AT_WRITE="1",
        EXPUNGE_FAULT_MATCH="put journal/committed/",
        EXPUNGE_FAULT_MODE="kill",
    )
    assert killed.returncode == 137, killed.stderr[-3000:]
    store = ObjectStore(StorageConfig(uri=str(store_root)))
    (request_id,) = Journal(store).ids("requests")
    assert len(chained_receipts(store, request_id)) == 1  # sealed (so answered) before the kill
    answered = Journal(store).status(request_id)
    assert answered is not None
    assert answered.stage == "committed"

    service = ErasureService(_config(store_root), hasher, None, pool_factory=local_pool, warm=False)
    try:
        again = service.wait(request_id, "committed", timeout=120)
        assert again.receipt is not None
        assert again.receipt.status == "not_found"
        assert again.receipt.committed_at == answered.receipt.committed_at  # the answer given, not a new one
    finally:
        service.close()
    assert len(chained_receipts(store, request_id)) == 1  # one request, one receipt in the log
    assert Journal(store).batches() == []


def _until(check, what: str):
    return until(check, what, _BOUND_S, poll_s=0.05)


@pytest.fixture
def held_stage(monkeypatch) -> threading.Event:
    """The journal stage writes nothing until the event is set (a stage lagging a batch behind)."""
    go = threading.Event()
    write = JournalStage._write

    def held(self, item):
        assert go.wait(_BOUND_S), "the test never released the journal stage"
        return write(self, item)

    monkeypatch.setattr(JournalStage, "_write", held)
    return go


def test_the_store_status_read_while_the_stage_writes_never_goes_back_to_accepted(store_root, hasher, held_stage):
    """A reader that misses the committed record, then lists batches after the stage dropped the batch."""
    service = ErasureService(_config(store_root), hasher, None, pool_factory=local_pool, warm=False)
    try:
        request_id = service.submit([SUBJECTS[0]])
        assert service.wait(request_id, "committed", timeout=_BOUND_S).receipt.status == "erased"

        class Racing(ObjectStore):
            def list_keys(self, prefix: str) -> list[str]:
                if prefix.startswith("journal/batches") and not held_stage.is_set():
                    held_stage.set()  # the stage writes the committed record and drops the batch now
                    assert service.journaling.drain(timeout=_BOUND_S)
                return super().list_keys(prefix)

        stored = Journal(Racing(StorageConfig(uri=str(store_root)))).status(request_id)
        assert held_stage.is_set()  # the race was run
        assert stored is not None
        assert stored.reached("committed"), stored
    finally:
        held_stage.set()
        service.close()


def test_stats_count_a_registered_commit_once_while_its_batch_record_is_dropped(store_root, hasher, monkeypatch):
    """After the hand-off to registration the stage's own count of the commit must end."""
    release = threading.Event()
    drop = Journal.drop_batch

    def held_drop(self, batch_id):
        assert release.wait(_BOUND_S)
        return drop(self, batch_id)

    monkeypatch.setattr(Journal, "drop_batch", held_drop)
    service = ErasureService(_config(store_root), hasher, None, pool_factory=local_pool, warm=False)
    try:
        request_id = service.submit([SUBJECTS[1]])
        _until(lambda: service.status(request_id).stage == "registered", "registered")
        assert service.stats().pending_registrations == 0  # registered; only its batch record is still being dropped
    finally:
        release.set()
        service.close()


def test_a_bug_in_a_commits_journal_records_is_shown_and_retried_in_the_same_process(store_root, hasher, monkeypatch):
    """After the commit point a pending step is retried and shown, never forgotten: a bug included."""
    write = Journal.write_committed
    failures = iter(range(2))

    def failing_twice(self, receipt):
        if next(failures, None) is not None:
            raise RuntimeError("a bug in the committed record")
        return write(self, receipt)

    monkeypatch.setattr(Journal, "write_committed", failing_twice)
    service = ErasureService(_config(store_root), hasher, None, pool_factory=local_pool, warm=False)
    try:
        request_id = service.submit([SUBJECTS[3]])
        seen = _until(lambda: service.stats().pending_cause, "the journal cause shown")
        assert seen.startswith("journal: RuntimeError"), seen
        _until(lambda: service.status(request_id).stage == "registered", "registered in this process")
        assert request_id in Journal(ObjectStore(StorageConfig(uri=str(store_root)))).ids("committed")
        assert service.stats().pending_cause is None
        assert service.stats().pending_registrations == 0
    finally:
        service.close()


def test_a_bug_in_dropping_a_batch_record_holds_back_no_later_commit(store_root, hasher, monkeypatch):
    """Review: once a commit's records are written and handed on, its batch record is the next start's to drop.

    Retried in place, a bug there held back every later commit's journal records and registration.
    """

    def broken_drop(self, batch_id):
        raise RuntimeError("a bug in drop_batch")

    monkeypatch.setattr(Journal, "drop_batch", broken_drop)
    service = ErasureService(_config(store_root), hasher, None, pool_factory=local_pool, warm=False)
    try:
        first = service.submit([SUBJECTS[4]])
        _until(lambda: service.status(first).stage == "registered", "the first registered")
        second = service.submit([SUBJECTS[5]])
        _until(lambda: service.status(second).stage == "registered", "the second registered")
        assert service.journaling.drain(timeout=_BOUND_S)
        assert service.stats().pending_cause is None
    finally:
        service.close()
    assert {first, second} <= Journal(ObjectStore(StorageConfig(uri=str(store_root)))).ids("committed")


@pytest.fixture
def proxy(s3_server: str) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server, FaultSchedule()) as running:
        yield running


def test_a_finished_purge_does_not_hide_a_journal_write_still_refused(proxy, s3_versioned_bucket, hasher):
    """The purge repair (worker) and the journal retry (stage) share the request's pending steps."""
    storage = StorageConfig(uri=f"s3://{s3_versioned_bucket}/store", endpoint_url=proxy.url, timeout_s=2)
    config = job(shards=2, slices=2).model_copy(
        update={"storage": storage, "tracking": TrackingConfig(enabled=False), "service": ServiceConfig(window_ms=0)}
    )
    Coordinator(storage, hasher, pool_factory=local_pool).train(ROWS, config)
    service = ErasureService(config, hasher, None, pool_factory=local_pool, warm=False)
    try:
        # Version deletes refused (the purge is pending) and every committed record's PUT cut.
        refused = r"journal/committed/|^/[^/]+/?$"  # the records, and the bucket (multi-object deletes)
        writes = frozenset({"PUT", "POST", "DELETE"})
        proxy.set_schedule(
            FaultSchedule(rates={"refuse_delete": 1.0, "cut": 1.0}, methods=writes, path_pattern=refused)
        )
        request_id = service.submit([SUBJECTS[2]])
        _until(lambda: any(p.startswith("journal: ") for p in service.status(request_id).pending), "journal pending")
        # The delete policy is lifted; the committed records stay refused.
        proxy.set_schedule(
            FaultSchedule(rates={"cut": 1.0}, methods=frozenset({"PUT"}), path_pattern="journal/committed/")
        )
        _until(lambda: not any(p.startswith("purge") for p in service.status(request_id).pending), "purge retried")
        assert request_id not in Journal(ObjectStore(StorageConfig(uri=storage.uri, endpoint_url=proxy.url))).ids(
            "committed"
        )
        assert any(p.startswith("journal: ") for p in service.status(request_id).pending)
        assert (service.stats().pending_cause or "").startswith("journal: ")  # shown beside the counters too
        proxy.pause()
        _until(lambda: service.status(request_id).pending == (), "journal retried")
    finally:
        proxy.pause()
        service.close()


def test_a_status_read_while_a_batch_record_is_being_written_reads_the_request_as_accepted(tmp_path, hasher):
    # A reader beside the service lists journal/batches/ while the worker writes one: an empty or
    # partial record there is a batch not started yet, not a broken journal (the read raised before).
    root = tmp_path / "store"
    config = _config(root)
    Coordinator(config.storage, hasher, None, pool_factory=local_pool).train(ROWS, config)
    waiting = config.model_copy(update={"service": ServiceConfig(window_ms=60_000)})  # never commits here
    service = ErasureService(waiting, hasher, None, pool_factory=local_pool, warm=False)
    try:
        request_id = service.submit([SUBJECTS[3]])
        (root / "journal" / "batches").mkdir(parents=True, exist_ok=True)
        (root / "journal" / "batches" / "batch-being-written.json").write_bytes(b"")
        assert Journal(ObjectStore(config.storage)).status(request_id).stage == "accepted"
    finally:
        service.close()
