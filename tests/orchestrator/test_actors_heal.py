"""Actors heal: a shard actor killed with SIGKILL serves again from the published version, no erasure needed (issue 18)."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from expunge.orchestrator.config import SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator
from expunge.orchestrator.pool import RayShardPool
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from tests.engine import job

pytestmark = pytest.mark.integration

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=30, items=15, ratings_per_user=5, seed=12))
SUBJECTS = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))


def _pool(restarts: int):
    return lambda storage, training, model, versions: RayShardPool(
        storage, training, model, versions, restarts=restarts
    )


def _kill(coordinator: Coordinator, shard: int) -> None:
    import ray

    pid = ray.get(coordinator.pool.actors[shard].pid.remote())  # type: ignore[attr-defined]
    os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    "restarts", [0, pytest.param(-1, marks=pytest.mark.slow)], ids=["no-ray-restart", "ray-restarts"]
)
def test_a_killed_actor_serves_again_during_serving_and_after_a_retrain(tmp_path, hasher, ray_cluster, restarts):
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=_pool(restarts))
    try:
        coordinator.train(ROWS, job(shards=2, slices=2))
        probe = ROWS.slice(0, 40)
        served = coordinator.predict(probe)
        _kill(coordinator, 0)  # during serving
        np.testing.assert_array_equal(coordinator.predict(probe), served)

        receipt = coordinator.forget([SUBJECTS[3]])  # the retrained shard's old version is purged
        (shard,) = receipt.affected_shards
        after = coordinator.predict(probe)
        _kill(coordinator, shard)  # after a retrain: Ray's restart would reload a purged version
        np.testing.assert_array_equal(coordinator.predict(probe), after)
        assert coordinator.recommend(SUBJECTS[5], k=3)
    finally:
        coordinator.close()
