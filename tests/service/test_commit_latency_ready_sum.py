"""The ready path sums a new version from the last solved one (issue 22): bit for bit the sum from scratch."""

from __future__ import annotations

import numpy as np

from expunge.orchestrator.config import (
    ItemStatsConfig,
    JobConfig,
    SyntheticRatingsConfig,
)
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.service.core import ErasureService
from expunge.orchestrator.serving import ready
from expunge.orchestrator.serving.ready import solve_from_scratch
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.models import ItemStatsModel
from expunge.shards.rows import SUBJECT_ID
from tests.engine import service_job, without

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=40, items=20, ratings_per_user=5, seed=7))
SUBJECTS = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))
STATS = ItemStatsConfig(factors=2, neighbours=5)


def _job(path) -> JobConfig:
    return service_job(path, STATS)


def _buffers(module) -> dict[str, bytes]:
    return {name: tensor.numpy().tobytes() for name, tensor in module.state_dict().items()}


def _fit_arrays(ensemble) -> dict[str, bytes]:
    fit = ensemble.fit
    return {n: np.asarray(getattr(fit, n)).tobytes() for n in ("ranking", "similarity", "factors", "item_bias")}


def test_each_served_version_is_the_from_scratch_sum_and_fit_after_erasures_on_several_shards(tmp_path, hasher):
    config = _job(tmp_path)
    Coordinator(config.storage, hasher, None, pool_factory=local_pool).train(ROWS, config)
    service = ErasureService(config, hasher, None, pool_factory=local_pool)
    fits = service.readiness.fits
    assert fits is not None
    erased: list[str] = []
    try:
        # one subject, then two at once (other shards), then one more: several shards change
        for group in ([SUBJECTS[0]], [SUBJECTS[5], SUBJECTS[11]], [SUBJECTS[17]]):
            receipt = service.forget(group, timeout=120)
            erased += group
            assert fits.wait(receipt.model_version_after or 0, timeout=120)
            served = service.readiness.served()
            assert served is not None
            assert served.version == receipt.model_version_after
            scratch = solve_from_scratch(service.coordinator.store, service.coordinator.require_manifest())
            assert served.ensemble.state.subjects == scratch.state.subjects
            assert _buffers(served.ensemble.state) == _buffers(scratch.state)
            assert _fit_arrays(served.ensemble) == _fit_arrays(scratch)
        # Pure erasures: each sum was the last one without the erased subjects, no shard read.
        assert fits.sums["subtracted"] == 3
        other = _job(tmp_path / "reference")
        reference = Coordinator(other.storage, hasher, None, pool_factory=local_pool)
        reference.train(without(ROWS, erased), other)
        assert _buffers(served.ensemble.state) == _buffers(reference.statistics().state)
    finally:
        service.close()


def test_a_sum_from_the_last_version_that_fails_falls_back_to_summing_every_shard(tmp_path, hasher, monkeypatch):
    config = _job(tmp_path)
    Coordinator(config.storage, hasher, None, pool_factory=local_pool).train(ROWS, config)
    service = ErasureService(config, hasher, None, pool_factory=local_pool)
    fits = service.readiness.fits
    assert fits is not None
    try:
        assert fits.wait(service.coordinator.require_manifest().version, timeout=120)
        full_before = fits.sums["full"]

        class Broken(ItemStatsModel):  # the ready thread's model only: the shards' own subtract is untouched
            def subtract(self, state, part, replacement=None):  # type: ignore[no-untyped-def]
                raise RuntimeError("a bug in subtract")

        monkeypatch.setattr(ready, "model_for", lambda config: Broken(config))
        receipt = service.forget([SUBJECTS[2]], timeout=120)
        assert fits.wait(receipt.model_version_after or 0, timeout=120)
        served = service.readiness.served()
        assert served is not None
        scratch = solve_from_scratch(service.coordinator.store, service.coordinator.require_manifest())
        assert _buffers(served.ensemble.state) == _buffers(scratch.state)
        assert fits.sums["full"] == full_before + 1
    finally:
        service.close()
