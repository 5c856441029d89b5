"""Evidence across ingests: tampering before an ingest is not laundered by the erasure after it."""

from __future__ import annotations

import pytest

from expunge.orchestrator.config import MFConfig, SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from tests.conftest import TEST_KEY
from tests.engine import job

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=30, items=20, ratings_per_user=6, seed=8))


def test_a_file_changed_before_an_ingest_is_recorded_by_the_next_erasure(tmp_path) -> None:
    hasher = SubjectHasher(TEST_KEY)
    store = tmp_path / "store"
    coordinator = Coordinator(str(store), hasher, pool_factory=local_pool)
    subjects = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))
    coordinator.train(ROWS, job(model=MFConfig(embedding_dim=4), shards=2, slices=2))
    coordinator.forget([subjects[0]])  # a receipt binds every file of this version
    homes = coordinator.placement_index().home_cells()
    erased_next = subjects[1]
    other = 1 - homes[hasher.digest(erased_next)].shard
    manifest = coordinator.require_manifest()
    untouched = f"shards/{other:04d}/manifests/{manifest.shard_versions[other]:08d}.json"
    tampered = store / untouched
    tampered.write_bytes(tampered.read_bytes() + b" ")  # rewritten in place between two commits, by hand
    # The ingest and the erasure after it both stay on the other shard: the tampered manifest is carried.
    same_shard = next(s for s in subjects[2:] if homes[hasher.digest(s)].shard != other)
    known = ROWS.filter(ROWS.column(SUBJECT_ID).to_numpy(zero_copy_only=False) == same_shard).slice(0, 1)
    added = coordinator.ingest(known.set_column(0, "record_id", [["late-1"]]))  # an ingest binds no state
    assert added.touched_shards == [1 - other]
    receipt = coordinator.forget([erased_next])
    assert receipt.state is not None
    assert any(untouched in problem for problem in receipt.state.carried_mismatches)


def test_a_failed_publish_is_never_built_on_by_the_retry(tmp_path, monkeypatch) -> None:
    """The store fails the publish of an erasure a batch joined; the retry (erasure alone) must not
    publish the shard versions the failed attempt left in the actors (they hold the batch's rows)."""
    from expunge.orchestrator.errors import ExpungeError
    from expunge.orchestrator.evidence.rederive import rederive_shards
    from expunge.shards.store import FaultPlan

    hasher = SubjectHasher(TEST_KEY)
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    subjects = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))
    coordinator.train(ROWS, job(model=MFConfig(embedding_dim=4), shards=2, slices=2))
    digest = hasher.digest(subjects[0])
    newcomers = ROWS.slice(0, 4).set_column(0, "record_id", [[f"new-{i}" for i in range(4)]])
    newcomers = newcomers.set_column(1, "subject_id", [["newcomer-a", "newcomer-a", "newcomer-b", "newcomer-b"]])
    prepared = coordinator.prepare_ingest(newcomers, erasing=[digest])
    monkeypatch.setenv("EXPUNGE_FAULT_AT_WRITE", "1")
    monkeypatch.setenv("EXPUNGE_FAULT_MATCH", "create ensemble/")  # the publish itself fails
    FaultPlan.reset()
    try:
        coordinator.forget_digests([digest], request_id="req-joined", ingest=prepared)
    except ExpungeError:
        pass
    else:  # pragma: no cover - the fault must fire
        raise AssertionError("the injected publish fault did not fire")
    monkeypatch.delenv("EXPUNGE_FAULT_AT_WRITE")
    assert coordinator.require_manifest().version == 1
    retry = coordinator.forget_digests([digest], request_id="req-joined")  # the service's attempt 2
    assert retry.rows_removed > 0
    manifest = coordinator.require_manifest()
    assert manifest.rows == len(ROWS) - retry.rows_removed  # the batch's rows were not published
    found = rederive_shards(coordinator.catalog, manifest, range(manifest.sharding.shards))
    assert all(r.result.exact for r in found.values())


def test_verifying_an_ingest_id_as_an_erasure_names_the_ingest_check(tmp_path) -> None:
    from expunge.orchestrator.errors import ConfigError
    from expunge.orchestrator.evidence.verify import verify_erasure

    hasher = SubjectHasher(TEST_KEY)
    store = tmp_path / "store"
    coordinator = Coordinator(str(store), hasher, pool_factory=local_pool)
    coordinator.train(ROWS.slice(0, 120), job(model=MFConfig(embedding_dim=4), shards=2, slices=2))
    coordinator.ingest(ROWS.slice(120, 20), request_id="daily-2026-12-05")
    with pytest.raises(ConfigError, match="is an ingest") as refused:
        verify_erasure(str(store), "daily-2026-12-05", hasher, log_to_mlflow=False)
    assert "verify_ingest" in str(
        refused.value
    )  # `expunge verify --request` verifies it (tests/ingest/test_ingest_verify.py)
