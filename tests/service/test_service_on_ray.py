"""The service as a detached Ray actor, through the SDK: warm erasure, a killed coordinator, a killed shard actor."""

from __future__ import annotations

import secrets
import sys
import time
import uuid

import pytest
import ray

from expunge import RayClient
from expunge.orchestrator.catalog import Catalog
from expunge.orchestrator.config import (
    ItemStatsConfig,
    JobConfig,
    PrivacyConfig,
    ServiceConfig,
    StorageConfig,
    SyntheticRatingsConfig,
    TrackingConfig,
)
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError, InvalidSubjectIdError, ServiceUnavailableError
from expunge.orchestrator.evidence.exactness import constituents_equal
from expunge.orchestrator.evidence.receipt_chain import chained_receipts
from expunge.orchestrator.service.actor import find_service, start_service, stop_service
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from expunge.shards.store import ObjectStore
from tests.engine import from_scratch, job, without

pytestmark = pytest.mark.usefixtures("ray_cluster")

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=40, items=20, ratings_per_user=5, seed=9))
SUBJECTS = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))


def _keyed_job(tmp_path, monkeypatch, **job_args) -> tuple[JobConfig, SubjectHasher]:
    """A trained store in a namespace of its own, its key in a file; ``job_args`` for ``tests.engine.job``."""
    key = secrets.token_hex(32)
    monkeypatch.setenv("EXPUNGE_SUBJECT_KEY", key)
    # The session's Ray workers started before the key was set: the service reads it from a file,
    # as on a cluster with the key mounted (it is never passed through Ray).
    key_file = tmp_path / "subject.key"
    key_file.write_text(key)
    key_file.chmod(0o600)
    hasher = SubjectHasher(key.encode())
    service = {"window_ms": 0, **job_args.pop("service", {})}
    config = job(**{"shards": 3, "slices": 3, **job_args}).model_copy(
        update={
            "storage": StorageConfig(uri=str(tmp_path / "store")),
            "tracking": TrackingConfig(enabled=False),
            "service": ServiceConfig(namespace=f"test-{uuid.uuid4().hex[:8]}", **service),
            "privacy": PrivacyConfig(subject_key_file=str(key_file)),
        }
    )
    Coordinator(config.storage, hasher, pool_factory=local_pool).train(ROWS, config)
    return config, hasher


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A trained store and a running service in a namespace of its own; yields (job, hasher, client)."""
    config, hasher = _keyed_job(tmp_path, monkeypatch)
    namespace = config.service.namespace
    started: list[bool] = []

    def start(**env: str) -> RayClient:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        start_service(config)
        started.append(True)
        return RayClient.connect(namespace=namespace, retry_s=180)

    yield config, hasher, start
    if started:
        stop_service(namespace, config.service.name)


def _restarted(client: RayClient, pid: int, marker) -> bool:
    """True once the fault fired (``marker`` written) and a coordinator other than ``pid`` answers (bounded wait)."""
    deadline = time.monotonic() + 120  # a bound on a restart, not a speed target
    while time.monotonic() < deadline:
        try:
            if marker.exists() and client._call("pid") != pid:
                return True
        except ServiceUnavailableError:
            pass  # restarting
        time.sleep(0.2)
    return False


def _exact(tmp_path, config: JobConfig, hasher: SubjectHasher, erased: list[str]) -> bool:
    served_now = Coordinator(config.storage, hasher, pool_factory=local_pool)
    reference = from_scratch(tmp_path, served_now, without(ROWS, erased), config, hasher)
    return all(constituents_equal(served_now.constituent_tensors(), reference.constituent_tensors()).values())


def test_the_sdk_erases_through_the_warm_service_and_serves_the_new_version(tmp_path, served):
    config, hasher, start = served
    client = start()
    handle = find_service(config.service.namespace, config.service.name)
    # Its threads share one GIL and wait on writes all the time: a short switch interval (service.switch_interval_ms).
    assert ray.get(handle.__ray_call__.remote(lambda self: sys.getswitchinterval())) == 0.0005
    version = client.model_version()
    receipt = client.forget([SUBJECTS[0]], idempotency_key="GDPR-1", reason="ticket GDPR-1")
    assert receipt.status == "erased"
    assert receipt.committed_at is not None
    assert client.model_version().ensemble_version == version.ensemble_version + 1  # served at commit
    done = client.wait(receipt.request_id, stage="registered", timeout=120)
    assert done.stage == "registered"
    assert client.forget([SUBJECTS[0]], idempotency_key="GDPR-1").request_id == receipt.request_id
    # Through the Ray SDK too: a submitted request is found again by its ticket or its key.
    submitted = client.submit(["nobody-by-this-name"], idempotency_key="GDPR-3", ticket="DESK-3")
    assert client.status("DESK-3").request_id == submitted
    assert client.status("GDPR-3").request_id == submitted
    missed = client.forget(["nobody-at-all"])
    assert missed.status == "not_found"
    with pytest.raises(InvalidSubjectIdError):
        client.forget(["fine", 2.5])
    with pytest.raises(ConfigError):
        client.forget([])
    with pytest.raises(ConfigError, match="list of ids"):
        client.forget(SUBJECTS[1])  # a string is not read as one id per character
    assert len(client.recommend(SUBJECTS[1], k=3)) == 3
    assert client.predict(
        [{"subject_id": SUBJECTS[1], "item_id": 3}, {"subject_id": "newcomer", "item_id": 3}]
    ).shape == (2,)
    assert _exact(tmp_path, config, hasher, [SUBJECTS[0]])
    stop_service(config.service.namespace, config.service.name)
    with pytest.raises(ServiceUnavailableError, match="was stopped"):
        client.forget([SUBJECTS[2]])


@pytest.mark.parametrize(
    "crash_at",
    [
        # Right after the store commit, before the journal says so: the restart must not erase twice.
        "put journal/committed",
        # Right before the commit point (the ensemble manifest): the restart redoes the erasure.
        pytest.param("create ensemble/", marks=pytest.mark.slow),
    ],
)
def test_a_coordinator_killed_mid_erasure_finishes_the_request_once_on_restart(tmp_path, served, crash_at):
    config, hasher, start = served
    client = start(
        EXPUNGE_FAULT_AT_WRITE="1",
        EXPUNGE_FAULT_MODE="kill",
        EXPUNGE_FAULT_MATCH=crash_at,
        EXPUNGE_FAULT_ONCE=str(tmp_path / "killed-once"),
    )
    pid = client._call("pid")
    receipt = client.forget([SUBJECTS[4]], idempotency_key="GDPR-kill-1")  # retried across the restart
    # The journal's committed record is written after the answer (the journal stage), so the
    # crash there may come after forget returned: wait for the restarted coordinator.
    assert _restarted(client, pid, tmp_path / "killed-once")
    assert receipt.status == "erased"
    again = client.forget([SUBJECTS[4]], idempotency_key="GDPR-kill-1")  # the restart finished it, once
    assert again.request_id == receipt.request_id
    assert again.model_version_after == receipt.model_version_after
    catalog = Catalog(ObjectStore(config.storage))
    assert [catalog.read(v).kind for v in catalog.versions()] == ["train", "erasure"]
    assert len(chained_receipts(ObjectStore(config.storage), receipt.request_id)) == 1
    assert _exact(tmp_path, config, hasher, [SUBJECTS[4]])


def test_a_shard_actor_killed_mid_retrain_restarts_and_the_request_completes(tmp_path, served):
    config, hasher, start = served
    # The shard actor dies at its first write of the erasure (a slice or checkpoint); Ray restarts it.
    client = start(
        EXPUNGE_FAULT_AT_WRITE="1",
        EXPUNGE_FAULT_MODE="kill",
        EXPUNGE_FAULT_MATCH="put shards/",
        EXPUNGE_FAULT_ONCE=str(tmp_path / "shard-killed-once"),
    )
    before = client._call("shard_actor_pids")
    receipt = client.forget([SUBJECTS[5]])
    assert (tmp_path / "shard-killed-once").exists()
    assert receipt.status == "erased"
    (shard,) = receipt.affected_shards
    after = client._call("shard_actor_pids")
    assert after[shard] != before[shard]  # the same actor, restarted in a new process
    assert _exact(tmp_path, config, hasher, [SUBJECTS[5]])


def test_an_item_stats_service_on_ray_pipelines_queued_batches_and_stays_exact(tmp_path, monkeypatch):
    # The pipeline on real shard actors: a batch's shards start retraining in a thread of the
    # coordinator while the commit before it is purged and sealed (docs/service.md, "Coalescing").
    model = ItemStatsConfig(factors=2, neighbours=5)
    config, hasher = _keyed_job(tmp_path, monkeypatch, model=model, slices=2, service={"max_subjects_per_batch": 1})
    namespace = config.service.namespace
    start_service(config)
    try:
        client = RayClient.connect(namespace=namespace, retry_s=180)
        chosen = SUBJECTS[10:16]
        ids = [client.submit([s]) for s in chosen]  # one subject per batch: the later ones queue
        receipts = [client.wait(i, "committed", timeout=180).receipt for i in ids]
        assert all(r is not None and r.status == "erased" for r in receipts)
        versions = [r.model_version_after for r in receipts if r is not None]
        assert len(set(versions)) == len(ids)  # one commit each, in commit order
        assert client.stats().batches_ahead >= 1  # some batch began at the commit before it
        assert _exact(tmp_path, config, hasher, chosen)
    finally:
        stop_service(namespace, config.service.name)


def test_a_service_refused_its_registry_at_start_is_a_typed_error(tmp_path, monkeypatch):
    # Second adversarial review: `expunge serve` on a copy of a store refused its registry exited 4
    # (retry) with a Ray traceback: Ray wraps the constructor's error in an ActorDiedError's argument.
    import shutil

    from expunge.orchestrator.errors import RegistryOfAnotherStoreError
    from expunge.orchestrator.registry import Lineage

    (tmp_path / "original").mkdir()
    config, hasher = _keyed_job(tmp_path / "original", monkeypatch, shards=2, slices=2)
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="refused", model_name="refused")
    Coordinator(config.storage, hasher, Lineage(tracking, config.storage), local_pool).train(ROWS, config)
    shutil.copytree(tmp_path / "original" / "store", tmp_path / "copy")
    copy = config.model_copy(update={"storage": StorageConfig(uri=str(tmp_path / "copy")), "tracking": tracking})
    with pytest.raises(RegistryOfAnotherStoreError, match="one is a copy of the other"):
        start_service(copy)
