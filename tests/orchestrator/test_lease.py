"""One writer per store: the lease with a fencing token (issue 18, deliverable 1)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from expunge.orchestrator.catalog import Catalog
from expunge.orchestrator.config import ServiceConfig, StorageConfig, SyntheticRatingsConfig, TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import LeaseLostError, StorageConflictError, StoreBusyError
from expunge.orchestrator.lease import LeaseRecord, LeaseState, StoreLease, lease_state, process_pid_space
from expunge.orchestrator.service.core import ErasureService
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from expunge.shards.store import ObjectStore
from tests.engine import job

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=30, items=15, ratings_per_user=5, seed=3))
SUBJECTS = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))
KEY = "3f9c2b7e1d8a4f6052c7e9b1a3d5f7082e4c6a8b0d2f4e6a8c0e2a4c6e8a0c2e"  # strong enough for the CLI
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _record(owner="other:1:x", host="elsewhere", pid=1, ttl=30.0, token=1, pid_space="boot:1") -> LeaseRecord:
    return LeaseRecord(
        token=token, owner=owner, host=host, pid=pid, purpose="expunge serve", since="t", ttl_s=ttl, pid_space=pid_space
    )


@pytest.mark.parametrize(
    ("state", "pid_alive", "verdict"),
    [
        (LeaseState(None, None, False), True, "free"),
        (LeaseState(_record(), NOW, True), True, "free"),  # released
        (LeaseState(_record(owner="me"), NOW, False), True, "mine"),
        (LeaseState(_record(), NOW - timedelta(seconds=5), False), True, "held"),
        (LeaseState(_record(), NOW - timedelta(seconds=32), False), True, "expired"),
        (LeaseState(_record(host="here"), NOW, False), False, "dead"),  # this host and PID namespace, gone
        # A pid this PID namespace cannot see: a live holder in another container, or an older record.
        (LeaseState(_record(host="here", pid_space="boot:2"), NOW, False), False, "held"),
        (LeaseState(_record(host="here", pid_space=None), NOW, False), False, "held"),
        (LeaseState(_record(), NOW - timedelta(seconds=30.5), False), True, "held"),  # S3's whole seconds
        (LeaseState(_record(host="elsewhere"), NOW, False), False, "held"),  # another host: only expiry frees it
    ],
)
def test_lease_state_is_a_pure_decision(state, pid_alive, verdict):
    assert lease_state(state, NOW, "me", "here", pid_alive, "boot:1") == verdict


def test_a_second_process_is_refused_with_the_holder_named_and_takes_over_after_release(tmp_path):
    store = ObjectStore(str(tmp_path / "store"))
    mine = StoreLease(store, ttl_s=30)
    theirs = StoreLease(store, ttl_s=30, owner=f"{socket.gethostname()}:{os.getpid()}:other")
    token = mine.acquire("expunge serve")
    try:
        with pytest.raises(StoreBusyError, match=rf"expunge serve on host {socket.gethostname()}, pid {os.getpid()}"):
            theirs.acquire("expunge forget")
        assert mine.acquire("again") == token  # re-entrant within a process
        mine.release()
        assert mine.check() == token
    finally:
        mine.release()
    with pytest.raises(LeaseLostError):
        mine.check()  # released: no commit may pass the fence
    assert theirs.acquire("expunge forget") == token + 1
    theirs.release()


def test_an_expired_lease_is_taken_over_and_its_old_holder_is_fenced(tmp_path):
    store = ObjectStore(str(tmp_path / "store"))
    stalled = StoreLease(store, ttl_s=30)
    token = stalled.acquire("expunge serve")
    try:
        # Another host's writer finds the lease expired (its beat 60 s old) and takes it over.
        for name in os.listdir(tmp_path / "store" / "lease"):
            old = time.time() - 60
            os.utime(tmp_path / "store" / "lease" / name, (old, old))
        stalled_record = StoreLease(store).read().record
        assert stalled_record is not None
        assert stalled_record.token == token
        successor = StoreLease(store, ttl_s=30, owner="elsewhere:7:y")
        # The renewer of `stalled` would beat again within ttl/4: stop it as a stall would.
        from expunge.orchestrator import lease as lease_module

        held = lease_module._REGISTRY[(store.uri, stalled.owner)]
        held.stop.set()
        held.thread.join()
        assert successor.acquire("expunge train") == token + 1
        with pytest.raises(LeaseLostError, match="taken over by expunge train"):
            stalled.check()
        successor.release()
    finally:
        stalled.release()


def test_a_holder_on_this_host_that_died_is_taken_over_at_once(tmp_path):
    store = ObjectStore(str(tmp_path / "store"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = _record(owner="gone", host=socket.gethostname(), pid=int(dead.stdout), ttl=3600, token=4)
    record = record.model_copy(update={"pid_space": process_pid_space()})
    store.create_exclusive("lease/00000004.json", record.model_dump_json().encode())
    lease = StoreLease(store)
    assert lease.acquire("expunge serve") == 5
    lease.release()


_HOLDER = """
import sys, time
from expunge.orchestrator.lease import StoreLease
from expunge.shards.store import ObjectStore
lease = StoreLease(ObjectStore(sys.argv[1]), ttl_s=30)
lease.acquire("expunge serve")
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def hasher() -> SubjectHasher:
    return SubjectHasher(KEY.encode())


@pytest.fixture
def trained_store(tmp_path, hasher):
    config = job(shards=2, slices=2).model_copy(
        update={
            "storage": StorageConfig(uri=str(tmp_path / "store")),
            "tracking": TrackingConfig(enabled=False),
            "service": ServiceConfig(window_ms=0),
        }
    )
    Coordinator(config.storage, hasher, pool_factory=local_pool).train(ROWS, config)
    return config


@pytest.fixture
def other_process_holds(trained_store):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, trained_store.storage.uri], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_a_second_service_and_a_cli_writer_are_refused_at_once_naming_the_holder(
    trained_store, other_process_holds, hasher, tmp_path
):
    before = sorted(p.name for p in (Path(trained_store.storage.uri) / "ensemble").iterdir())
    with pytest.raises(StoreBusyError, match=rf"pid {other_process_holds.pid}, since "):
        ErasureService(trained_store, hasher, None, pool_factory=local_pool, warm=False)
    coordinator = Coordinator(trained_store.storage, hasher, pool_factory=local_pool)
    with pytest.raises(StoreBusyError):
        coordinator.forget([SUBJECTS[0]])
    with pytest.raises(StoreBusyError):
        coordinator.train(ROWS, trained_store)
    with pytest.raises(StoreBusyError):
        coordinator.readmit([SUBJECTS[0]], reason="ticket 9")
    # Reading and serving need no lease.
    assert len(coordinator.predict(ROWS.slice(0, 3))) == 3
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "expunge.pipelines.cli",
            "forget",
            "--storage",
            trained_store.storage.uri,
            "--subject",
            SUBJECTS[0],
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "EXPUNGE_SUBJECT_KEY": KEY},
    )
    assert cli.returncode == 4, cli.stderr
    assert f"pid {other_process_holds.pid}" in cli.stderr
    assert "--service" in cli.stderr
    assert sorted(p.name for p in (Path(trained_store.storage.uri) / "ensemble").iterdir()) == before


def test_a_training_that_loses_to_an_erasure_leaves_nothing_behind(trained_store, hasher):
    # The rows hold subject Q; Q is tombstoned while the shards train (a writer from before
    # leases, or one that stalled): the commit refuses, and the placement, slices and
    # checkpoints the training wrote are deleted at once, not at the next open.
    coordinator = Coordinator(trained_store.storage, hasher, pool_factory=local_pool)
    store = coordinator.store
    before = set(store.list_keys("shards")) | set(store.list_keys("placement"))
    outsider = Catalog(ObjectStore(trained_store.storage))  # no fence: not this process's session

    def pool_factory(*args):
        pool = local_pool(*args)
        real_call = pool.call

        def call(method, per_shard):
            result = real_call(method, per_shard)
            if method == "train":
                outsider.append_tombstones("erased", [hasher.digest(SUBJECTS[1])], "req-elsewhere")
            return result

        pool.call = call  # type: ignore[method-assign]
        return pool

    coordinator.session.pool_factory = pool_factory
    with pytest.raises(StorageConflictError, match="erased while this training ran"):
        coordinator.train(ROWS, trained_store)
    after = set(store.list_keys("shards")) | set(store.list_keys("placement"))
    left = {k for k in after - before if "/slices/" in k or "/checkpoints/" in k or k.startswith("placement/")}
    assert left == set()
    assert coordinator.catalog.latest().version == 1


_RELEASES = """
import sys, time
from expunge.orchestrator.lease import StoreLease
from expunge.shards.store import ObjectStore
lease = StoreLease(ObjectStore(sys.argv[1]), ttl_s=30)
lease.acquire("expunge forget")
print("held", flush=True)
time.sleep(3)
lease.release()
time.sleep(60)
"""


def test_a_restarted_service_waits_for_a_rival_writer_to_finish(trained_store, hasher):
    # Ray restarts a killed service while a CLI job holds the store: the restart waits, it does not die.
    holder = subprocess.Popen(
        [sys.executable, "-c", _RELEASES, trained_store.storage.uri], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        service = ErasureService(trained_store, hasher, None, pool_factory=local_pool, warm=False, lease_wait_s=120)
        try:
            assert service.forget([SUBJECTS[2]], timeout=120).status == "erased"
        finally:
            service.close()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("garbage", [b"", b"{not json", b'{"token": 99, "owner": "x"}'])
def test_an_unreadable_newest_record_does_not_block_the_store(tmp_path, garbage):
    store = ObjectStore(str(tmp_path / "store"))
    store.put("lease/00000099.json", garbage)  # an operator's edit, or another release's format
    lease = StoreLease(store)
    assert lease.acquire("expunge forget") == 100  # past every listed token, not 0 + 1
    assert lease.check() == 100
    lease.release()


def test_a_holder_whose_lease_lapsed_takes_it_back(tmp_path):
    store = ObjectStore(str(tmp_path / "store"))
    service = StoreLease(store, ttl_s=30)
    token = service.acquire("expunge serve")
    try:
        other = StoreLease(store, ttl_s=30, owner="elsewhere:9:z")  # took it over while the service stalled
        store.create_exclusive(
            f"lease/{token + 1:08d}.json", _record(owner=other.owner, token=token + 1).model_dump_json().encode()
        )
        with pytest.raises(LeaseLostError):
            service.check()
        assert not service.reacquire("expunge serve")  # the other holder is live: not yet
        store.put(f"lease/{token + 1:08d}.released", b"")  # it finished
        assert service.reacquire("expunge serve")
        assert service.check() == token + 2
    finally:
        service.release()
    assert service.token is None  # the count was kept: one release ends it


def test_a_dead_holder_whose_pid_another_process_took_is_taken_over_at_once(tmp_path):
    # New-user review (thirteenth pass): pids wrap within minutes here (32768 of them), and a killed
    # forget's pid, given to a new process or thread, kept its lease "held" for 30 s (exit 4 naming
    # a dead process). The record names the holder's start time: a later process with its pid is not it.
    from expunge.orchestrator.processes import process_alive, process_started

    store = ObjectStore(str(tmp_path / "store"))
    live = os.getppid()  # a live process, standing in for a newcomer given the dead holder's pid
    started = process_started(live)
    assert started is not None
    ticks, _, space = started.partition("@")
    earlier = f"{int(ticks) - 1}@{space}"  # the dead holder: the same pid, started before
    record = _record(owner="gone", host=socket.gethostname(), pid=live, ttl=3600, token=4)
    record = record.model_copy(update={"pid_space": process_pid_space(), "pid_started": earlier})
    store.create_exclusive("lease/00000004.json", record.model_dump_json().encode())
    lease = StoreLease(store)
    assert lease.acquire("expunge forget") == 5
    lease.release()
    assert process_alive(live, started)  # the live process itself still counts as alive
    assert not process_alive(live, earlier)


def test_a_start_time_this_reader_cannot_compare_leaves_the_pid_to_tell():
    # Second adversarial review: a holder in another time namespace (its start time counts from another
    # boot offset), or one hidden from this reader (/proc with hidepid), was judged dead while it ran.
    from expunge.orchestrator.processes import process_alive

    live, gone = os.getppid(), _a_dead_pid()
    assert process_alive(live, "12345@time:[1]")  # another time namespace: the pid says alive
    assert not process_alive(gone, "12345@time:[1]")
    assert process_alive(live, "12345")  # a start time without its namespace (not this release's): the pid


def _a_dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)
