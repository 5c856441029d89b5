"""The coordinator on a real local Ray cluster: parallel actors, targeted calls, MLflow lineage."""

from __future__ import annotations

import pytest

from expunge.orchestrator.config import SyntheticRatingsConfig, TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, ray_pool
from expunge.orchestrator.evidence.exactness import constituents_equal
from expunge.orchestrator.registry import Lineage
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from tests.engine import from_scratch, job, store_snapshot, subject_in_slice, without

pytestmark = pytest.mark.integration

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=48, items=30, ratings_per_user=6, seed=9))


def test_erasure_on_ray_is_exact_targeted_and_recorded(tmp_path, hasher, ray_cluster):
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t", model_name="expunge-test")
    lineage = Lineage(tracking, str(tmp_path / "store"))
    config = job(shards=3, slices=3)
    coordinator = Coordinator(str(tmp_path / "store"), hasher, lineage, pool_factory=ray_pool)
    trained = coordinator.train(ROWS, config)
    assert trained.registry_version == "1"

    subject = subject_in_slice(coordinator, hasher, ROWS.column(SUBJECT_ID).to_pylist(), 1)
    home = coordinator.placement_index().home_cells()[hasher.digest(subject)].shard
    others = [s for s in range(3) if s != home]
    files = {s: store_snapshot(tmp_path / "store" / "shards" / f"{s:04d}") for s in others}
    receipt = coordinator.forget([subject], request_id="ticket-1")

    assert receipt.affected_shards == [home]
    logs = {s: __import__("ray").get(coordinator.pool.actors[s].call_log.remote()) for s in range(3)}  # type: ignore[attr-defined]
    assert logs[home].count("erase") == 1
    # Ray starts workers at niceness 15; Expunge's shard actors run at training.niceness (0).
    niceness = {__import__("ray").get(a.niceness.remote()) for a in coordinator.pool.actors.values()}  # type: ignore[attr-defined]
    assert niceness == {0}
    for s in others:
        assert "erase" not in logs[s]
        assert store_snapshot(tmp_path / "store" / "shards" / f"{s:04d}") == files[s]

    reference = from_scratch(tmp_path, coordinator, without(ROWS, [subject]), config, hasher, pool=ray_pool)
    assert all(constituents_equal(coordinator.constituent_tensors(), reference.constituent_tensors()).values())
    reference.close()

    assert (receipt.registry_version_before, receipt.registry_version_after) == ("1", "2")
    version = lineage.client.get_model_version("expunge-test", "2")
    assert version.tags["expunge.parent_version"] == "1"
    assert version.tags["expunge.request_id"] == "ticket-1"
    assert lineage.current_version() == "2"
    coordinator.close()


def test_a_new_coordinator_starts_only_the_affected_actor(tmp_path, hasher, ray_cluster):
    config = job(shards=3, slices=2)
    first = Coordinator(str(tmp_path / "store"), hasher, pool_factory=ray_pool)
    first.train(ROWS, config)
    first.close()
    second = Coordinator(str(tmp_path / "store"), hasher, pool_factory=ray_pool)  # e.g. a later forget job
    subject = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))[2]
    receipt = second.forget([subject])
    assert sorted(second.pool.actors) == receipt.affected_shards  # type: ignore[attr-defined]
    second.close()
