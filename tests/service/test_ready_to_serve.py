"""Ready to serve (issue 22): the exact solve runs beside the commits, is swapped in whole, and registration
never holds a commit back."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest

from expunge.orchestrator.config import (
    ItemStatsConfig,
    JobConfig,
    SyntheticRatingsConfig,
)
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.errors import UnknownSubjectError
from expunge.orchestrator.service.core import ErasureService
from expunge.orchestrator.serving.ensemble import StatisticsEnsemble
from expunge.orchestrator.serving.ready import solve_from_scratch
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import ITEM_ID, SUBJECT_DIGEST, SUBJECT_ID
from tests.engine import job, service_job, without

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=40, items=20, ratings_per_user=5, seed=5))
SUBJECTS = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))
STATS = ItemStatsConfig(factors=2, neighbours=5)


def _job(tmp_path, model=STATS) -> JobConfig:
    return service_job(tmp_path, model)


def _service(tmp_path, hasher, model=STATS) -> ErasureService:
    config = _job(tmp_path, model)
    Coordinator(config.storage, hasher, None, pool_factory=local_pool).train(ROWS, config)
    service = ErasureService(config, hasher, None, pool_factory=local_pool)
    if service.readiness.fits is not None:
        assert service.readiness.fits.wait(service.coordinator.require_manifest().version, timeout=120)
    return service


def _fit_arrays(ensemble: StatisticsEnsemble) -> dict[str, np.ndarray]:
    fit = ensemble.fit
    names = ("ranking", "similarity", "factors", "item_bias", "rated_items")
    return {name: np.asarray(getattr(fit, name)) for name in names}


def test_after_a_commit_the_served_model_is_bit_for_bit_the_from_scratch_solve(tmp_path, hasher):
    service = _service(tmp_path, hasher)
    try:
        receipt = service.forget([SUBJECTS[0]], timeout=120)
        assert service.readiness.fits is not None
        assert service.readiness.fits.wait(receipt.model_version_after or 0, timeout=120)
        served = service.readiness.served()
        assert served is not None
        assert served.version == receipt.model_version_after
        manifest = service.coordinator.require_manifest()
        scratch = solve_from_scratch(service.coordinator.store, manifest)
        for name, array in _fit_arrays(scratch).items():
            assert np.array_equal(_fit_arrays(served.ensemble)[name], array), name
        # ... and the solve of a store trained from scratch without the subject.
        other = _job(tmp_path / "reference")
        reference = Coordinator(other.storage, hasher, None, pool_factory=local_pool)
        reference.train(without(ROWS, [SUBJECTS[0]]), other)
        for name, array in _fit_arrays(reference.statistics()).items():
            assert np.array_equal(_fit_arrays(served.ensemble)[name], array), name
        status = service.wait(receipt.request_id, "committed", timeout=10)
        assert status.ready_at is not None
        assert status.ready_to_serve_s is not None
        assert status.ready_to_serve_s >= 0
        assert service.recommend(SUBJECTS[3], 5) == reference.recommend(SUBJECTS[3], 5)
        assert "ready" in service.stats().latency
    finally:
        service.close()


def test_the_previous_model_serves_until_the_new_one_is_swapped_in_and_the_erased_subject_gets_nothing(
    tmp_path, hasher, monkeypatch
):
    service = _service(tmp_path, hasher)
    fits = service.readiness.fits
    assert fits is not None
    before = service.readiness.served()
    assert before is not None
    gate, solving = threading.Event(), threading.Event()

    def held_solve(model, states):
        solving.set()
        assert gate.wait(120)
        return StatisticsEnsemble(model, states)

    monkeypatch.setattr(fits, "_solve", held_solve)
    gone, kept = SUBJECTS[1], SUBJECTS[4]
    try:
        expected = service.recommend(kept, 5)
        receipt = service.forget([gone], timeout=120)  # committed while the new solve is held
        assert solving.wait(120)
        served = service.readiness.served()
        assert served is not None
        assert served.version == before.version
        assert service.wait(receipt.request_id, "committed").ready_at is None
        with pytest.raises(UnknownSubjectError):
            service.recommend(gone, 5)  # masked at the commit, before the swap
        assert service.recommend(kept, 5) == expected
        rows = pa.table({ITEM_ID: pa.array([0, 1, 2], pa.int64()), SUBJECT_DIGEST: [hasher.digest(gone)] * 3})
        population = before.ensemble.fit.predict(rows.set_column(1, SUBJECT_DIGEST, pa.array([""] * 3)))
        assert np.array_equal(service.predict(rows), population)
        gate.set()
        assert fits.wait(receipt.model_version_after or 0, timeout=120)
        assert service.readiness.served().version == receipt.model_version_after
        with pytest.raises(UnknownSubjectError):
            service.recommend(gone, 5)
        assert service.wait(receipt.request_id, "committed").ready_at is not None
    finally:
        gate.set()
        service.close()


def test_a_model_served_by_its_shard_actors_is_ready_at_the_commit(tmp_path, hasher):
    service = _service(tmp_path, hasher, model=None)  # MF
    try:
        assert service.readiness.fits is None
        receipt = service.forget([SUBJECTS[2]], timeout=120)
        status = service.wait(receipt.request_id, "committed", timeout=10)
        assert status.ready_at is not None
        assert status.ready_to_serve_s is not None
    finally:
        service.close()


def test_a_registration_under_way_never_holds_a_commit_back(tmp_path, hasher, monkeypatch):
    service = _service(tmp_path, hasher, model=None)
    registering, release = threading.Event(), threading.Event()
    original = service.coordinator.register_published

    def slow_registration():
        registering.set()
        assert release.wait(120)
        return original()

    monkeypatch.setattr(service.coordinator, "register_published", slow_registration)
    try:
        first = service.forget([SUBJECTS[5]], timeout=120)
        assert registering.wait(60)  # MLflow is being brought up to the first commit, and stays busy
        second = service.forget([SUBJECTS[6]], timeout=60)  # committed all the same
        assert second.model_version_after == (first.model_version_after or 0) + 1
        assert service.status(first.request_id).stage == "committed"
        release.set()
        assert service.wait(second.request_id, "registered", timeout=120).stage == "registered"
    finally:
        release.set()
        service.close()


def test_an_erased_subject_is_refused_from_the_moment_its_status_says_committed(tmp_path, hasher):
    """Adversarial review: between the board saying committed and the mask, the old model answered
    the erased subject personally (recommend no longer waits for the commit's lock)."""
    service = _service(tmp_path, hasher)
    subject, seen = SUBJECTS[0], []
    remember = service.board.remember

    def spy(status):
        remember(status)
        if status.stage == "committed":
            try:
                seen.append(service.recommend(subject, 5))
            except UnknownSubjectError:
                seen.append("refused")

    service.board.remember = spy
    try:
        service.forget([subject], timeout=120)
    finally:
        service.board.remember = remember
        service.close()
    assert seen == ["refused"]


def test_a_version_purged_before_its_solve_read_is_skipped_without_a_warning(tmp_path, hasher, caplog, monkeypatch):
    # The commit worker purges the version it superseded before it asks for the new version's solve:
    # a solve of the old version that read in between found a checkpoint missing and warned about a
    # damaged store ("solving ensemble vN failed ... referenced but missing; trying again").
    from expunge.orchestrator.catalog import Catalog
    from expunge.orchestrator.errors import StorageCorruptError
    from expunge.orchestrator.serving import ready as ready_module
    from expunge.orchestrator.serving.ready import ReadyFits

    config = _job(tmp_path).model_copy(update={"sharding": job(model=STATS, shards=1, slices=2).sharding})
    coordinator = Coordinator(config.storage, hasher, None, pool_factory=local_pool)
    coordinator.train(ROWS, config)
    first = coordinator.forget([SUBJECTS[0]]).model_version_after
    second = coordinator.forget([SUBJECTS[1]]).model_version_after  # one shard: the first's checkpoints purged
    assert first is not None
    assert second is not None
    catalog = Catalog(coordinator.store)
    missed = threading.Event()
    read = ready_module._checkpoint

    def checkpoint(*args):
        try:
            return read(*args)
        except StorageCorruptError:
            missed.set()
            raise

    monkeypatch.setattr(ready_module, "_checkpoint", checkpoint)
    fits = ReadyFits(coordinator.store)
    try:
        with caplog.at_level("WARNING", logger="expunge.orchestrator.serving.ready"):
            fits.request(catalog.read(first))
            assert missed.wait(60)  # the solve of the purged version has failed to read it
            fits.request(catalog.read(second))
            assert fits.wait(second, timeout=120)
        assert not [r for r in caplog.records if "solving ensemble" in r.getMessage()]
        served = fits.served()
        assert served is not None
        assert served.version == second
    finally:
        fits.close()
