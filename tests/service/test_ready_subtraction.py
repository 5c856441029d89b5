"""The ready solve of a pure erasure takes the erased subjects out of the last sum, reading no shard (issue 22).

Each version served must still be bit for bit the from-scratch solve; a version the commit does not
vouch for as a pure erasure, or whose changed shards are not the erased subjects' shards, is read
from the shards instead.
"""

from __future__ import annotations

import threading
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from expunge.orchestrator.catalog import Catalog, EnsembleManifest
from expunge.orchestrator.config import (
    ItemStatsConfig,
    JobConfig,
    SyntheticRatingsConfig,
)
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.errors import UnknownSubjectError
from expunge.orchestrator.service.core import ErasureService
from expunge.orchestrator.service.ingestion import columns_table
from expunge.orchestrator.serving import ready
from expunge.orchestrator.serving.ensemble import StatisticsEnsemble
from expunge.orchestrator.serving.ready import ReadyFits, solve_from_scratch
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.models import ItemStatsModel, model_for
from expunge.shards.rows import ITEM_ID, RATING, RECORD_ID, SUBJECT_ID
from expunge.shards.training import load_checkpoint
from tests.engine import service_job

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=40, items=20, ratings_per_user=5, seed=11))
SUBJECTS = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))
STATS = ItemStatsConfig(factors=2, neighbours=5)


def _job(path: Path, window_ms: int = 0) -> JobConfig:
    return service_job(path, STATS, window_ms=window_ms)


def _bits(ensemble: StatisticsEnsemble) -> dict[str, bytes]:
    fit = ensemble.fit
    found = {name: tensor.numpy().tobytes() for name, tensor in ensemble.state.state_dict().items()}
    found.update({n: np.asarray(getattr(fit, n)).tobytes() for n in ("ranking", "similarity", "factors", "item_bias")})
    found["subjects"] = "\n".join(ensemble.state.subjects).encode()
    return found


def _served_is_from_scratch(fits: ReadyFits, coordinator: Coordinator, manifest: EnsembleManifest) -> None:
    assert fits.wait(manifest.version, timeout=120)
    served = fits.served()
    assert served is not None
    assert served.version == manifest.version
    assert _bits(served.ensemble) == _bits(solve_from_scratch(coordinator.store, manifest))


def test_service_erasures_are_subtracted_and_an_ingest_is_read_from_the_shards(tmp_path, hasher):
    config = _job(tmp_path)
    Coordinator(config.storage, hasher, None, pool_factory=local_pool).train(ROWS, config)
    service = ErasureService(config, hasher, None, pool_factory=local_pool)
    fits = service.readiness.fits
    assert fits is not None
    coordinator = service.coordinator
    try:
        _served_is_from_scratch(fits, coordinator, coordinator.require_manifest())
        for group in ([SUBJECTS[0]], [SUBJECTS[5], SUBJECTS[11]]):
            service.forget(group, timeout=120)
            _served_is_from_scratch(fits, coordinator, coordinator.require_manifest())
        assert fits.sums["subtracted"] == 2
        assert fits.sums["changed_shards"] == 0
        newcomers = {  # three new subjects, each rating a few items with their own record ids
            RECORD_ID: [f"add-{u}-{i}" for u in range(3) for i in range(4)],
            SUBJECT_ID: [f"new-{u}" for u in range(3) for _ in range(4)],
            ITEM_ID: [(3 * u + 2 * i) % 20 for u in range(3) for i in range(4)],
            RATING: [float(1 + (u + i) % 5) for u in range(3) for i in range(4)],
        }
        service.ingest(columns_table(newcomers))
        _served_is_from_scratch(fits, coordinator, coordinator.require_manifest())
        assert fits.sums["subtracted"] == 2  # the ingest's version was read: it added rows
        # A subject the ingest brought, then one from training: both subtracted from the new sum.
        for group in (["new-1"], [SUBJECTS[30]]):
            service.forget(group, timeout=120)
            _served_is_from_scratch(fits, coordinator, coordinator.require_manifest())
        assert fits.sums["subtracted"] == 4
    finally:
        service.close()


def _trained(tmp_path: Path, hasher) -> Coordinator:
    config = _job(tmp_path)
    coordinator = Coordinator(config.storage, hasher, None, pool_factory=local_pool)
    coordinator.train(ROWS, config)
    return coordinator


def _shard_subject(coordinator: Coordinator, hasher, subject: str, same: bool) -> str:
    """Another training subject whose rows are on the same shard as ``subject``'s, or on another one."""
    manifest = coordinator.require_manifest()
    model = model_for(manifest.model)
    assert isinstance(model, ItemStatsModel)
    catalog = Catalog(coordinator.store)
    shard_of: dict[str, int] = {}
    for shard, version in enumerate(manifest.shard_versions):
        key = catalog.shard_manifest(shard, version).checkpoints[-1].key
        shard_of.update(
            (d, shard) for d in model.subjects_of(load_checkpoint(model, coordinator.store.get(key)).module)
        )
    mine = shard_of[hasher.digest(subject)]
    return next(s for s in SUBJECTS if s != subject and (shard_of[hasher.digest(s)] == mine) is same)


def _first_solved(tmp_path: Path, hasher) -> tuple[Coordinator, ReadyFits]:
    """A trained store and a ``ReadyFits`` serving its published version, checked against the from-scratch solve."""
    coordinator = _trained(tmp_path, hasher)
    fits = ReadyFits(coordinator.store)
    fits.request(coordinator.require_manifest())
    _served_is_from_scratch(fits, coordinator, coordinator.require_manifest())
    return coordinator, fits


def test_a_version_vouched_for_with_the_wrong_subjects_is_read_from_its_shards(tmp_path, hasher):
    coordinator, fits = _first_solved(tmp_path, hasher)
    try:
        before = coordinator.require_manifest().version
        other = _shard_subject(coordinator, hasher, SUBJECTS[0], same=False)
        coordinator.forget([SUBJECTS[0]])
        manifest = coordinator.require_manifest()
        # A caller's mistake: the commit erased SUBJECTS[0], the request names a subject on another shard.
        fits.request(manifest, [hasher.digest(other)], erased_from=before)
        _served_is_from_scratch(fits, coordinator, manifest)
        assert fits.sums["subtracted"] == 0
    finally:
        fits.close()


def test_a_chain_of_pure_erasures_is_subtracted_at_once_and_a_gap_in_it_is_read(tmp_path, hasher):
    coordinator = _trained(tmp_path, hasher)
    release = threading.Event()

    def slow_first(model, states):  # holds the first solve until the later versions are all asked for
        release.wait(60)
        return StatisticsEnsemble(model, states)

    fits = ReadyFits(coordinator.store, solve=slow_first)
    try:
        versions = [coordinator.require_manifest()]
        fits.request(versions[0])
        for subject in SUBJECTS[1:3]:
            coordinator.forget([subject])
            versions.append(coordinator.require_manifest())
        for (parent, manifest), subject in zip(pairwise(versions), SUBJECTS[1:3], strict=True):
            fits.request(manifest, [hasher.digest(subject)], erased_from=parent.version)
        release.set()
        _served_is_from_scratch(fits, coordinator, versions[2])  # two erasures after the first solve, in one
        assert fits.sums["subtracted"] == 1
        # The next version vouched for from a version this ReadyFits never heard of: a gap, so read.
        coordinator.forget([SUBJECTS[3]])
        manifest = coordinator.require_manifest()
        fits.request(manifest, [hasher.digest(SUBJECTS[3])], erased_from=versions[2].version - 1)
        _served_is_from_scratch(fits, coordinator, manifest)
        assert fits.sums["subtracted"] == 1
    finally:
        fits.close()


def test_a_subtraction_that_fails_falls_back_to_reading_the_shards(tmp_path, hasher, monkeypatch):
    coordinator, fits = _first_solved(tmp_path, hasher)
    try:
        before = coordinator.require_manifest().version

        class Broken(ItemStatsModel):
            def without_subjects(self, state, digests):  # type: ignore[no-untyped-def]
                raise RuntimeError("a bug in without_subjects")

        monkeypatch.setattr(ready, "model_for", lambda config: Broken(config))
        coordinator.forget([SUBJECTS[6]])
        manifest = coordinator.require_manifest()
        fits.request(manifest, [hasher.digest(SUBJECTS[6])], erased_from=before)
        _served_is_from_scratch(fits, coordinator, manifest)
        assert fits.sums["subtracted"] == 0
        assert fits.sums["changed_shards"] == 1
    finally:
        fits.close()


def test_an_erasure_an_ingest_joined_is_read_from_the_shards(tmp_path, hasher):
    # The ingest adds rows for a subject on the erased subject's shard: the changed shards are the
    # erased subject's, so only the commit's word (an ingest joined) keeps the sum from a subtraction.
    config = _job(tmp_path, window_ms=1500)
    coordinator = Coordinator(config.storage, hasher, None, pool_factory=local_pool)
    coordinator.train(ROWS, config)
    erased = SUBJECTS[0]
    known = _shard_subject(coordinator, hasher, erased, same=True)
    service = ErasureService(config, hasher, None, pool_factory=local_pool)
    fits = service.readiness.fits
    assert fits is not None
    try:
        before = service.coordinator.require_manifest()
        _served_is_from_scratch(fits, service.coordinator, before)
        request_id = service.submit([erased])
        rows = {
            RECORD_ID: [f"more-{i}" for i in range(3)],
            SUBJECT_ID: [known] * 3,
            ITEM_ID: [1, 7, 13],
            RATING: [5.0, 1.0, 3.0],
        }
        receipt = service.ingest(columns_table(rows))
        assert receipt.rows_added == 3
        assert receipt.model_version_before == before.version  # one commit for both
        service.wait(request_id, "committed", timeout=120)
        _served_is_from_scratch(fits, service.coordinator, service.coordinator.require_manifest())
        assert fits.sums["subtracted"] == 0
    finally:
        service.close()


def test_a_subject_another_writer_erased_is_masked_and_ready_only_once_that_version_is_served(
    tmp_path, hasher, monkeypatch
):
    """Review: after another writer (same process, same lease) erased a subject, the service's own
    request for it found nobody, was marked ready at once, and the served older version still
    answered the subject personally."""
    config = _job(tmp_path)
    Coordinator(config.storage, hasher, None, pool_factory=local_pool).train(ROWS, config)
    service = ErasureService(config, hasher, None, pool_factory=local_pool)
    fits = service.readiness.fits
    assert fits is not None
    release = threading.Event()

    def held(model, states):  # the other writer's version stays unsolved until released
        release.wait(60)
        return StatisticsEnsemble(model, states)

    subject = SUBJECTS[3]
    try:
        assert fits.wait(service.coordinator.require_manifest().version, timeout=120)
        assert len(service.recommend(subject, k=2)) == 2
        monkeypatch.setattr(fits, "_solve", held)
        Coordinator(config.storage, hasher, None, pool_factory=local_pool).forget([subject])
        receipt = service.forget([subject], timeout=120)
        assert receipt.status == "not_found"
        with pytest.raises(UnknownSubjectError):
            service.recommend(subject, k=2)
        assert service.status(receipt.request_id).ready_at is None  # the served version still holds the subject
        release.set()
        _served_is_from_scratch(fits, service.coordinator, service.coordinator.require_manifest())
        statuses = [service.status(receipt.request_id)]
        while statuses[-1].ready_at is None and len(statuses) < 600:  # the mark follows the swap, on its thread
            time.sleep(0.1)
            statuses.append(service.status(receipt.request_id))
        assert statuses[-1].ready_at is not None
        with pytest.raises(UnknownSubjectError):
            service.recommend(subject, k=2)
    finally:
        release.set()
        service.close()
