"""The ready solve's fit carries the last fit's matrices over after a pure erasure, drops them otherwise,
and every served version stays bit for bit the solve from scratch."""

from __future__ import annotations

import numpy as np

from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.service.core import ErasureService
from expunge.orchestrator.service.ingestion import columns_table
from expunge.orchestrator.serving.ensemble import Refit, StatisticsEnsemble
from expunge.orchestrator.serving.ready import ReadyFits
from expunge.shards.models import item_stats_dense
from expunge.shards.rows import ITEM_ID, RATING, RECORD_ID, SUBJECT_ID
from tests.service.test_ready_subtraction import ROWS, SUBJECTS, _job, _served_is_from_scratch


def _latest(service: ErasureService):
    return service.coordinator.require_manifest()


def test_pure_erasures_carry_the_fit_over_and_an_ingest_builds_it(tmp_path, hasher) -> None:
    config = _job(tmp_path)
    Coordinator(config.storage, hasher, None, pool_factory=local_pool).train(ROWS, config)
    service = ErasureService(config, hasher, None, pool_factory=local_pool)
    fits = service.readiness.fits
    assert fits is not None
    try:
        _served_is_from_scratch(fits, service.coordinator, _latest(service))
        assert fits.fit_inputs == {"carried": 0, "built": 1}
        for subject in SUBJECTS[:2]:
            service.forget([subject], timeout=120)
            _served_is_from_scratch(fits, service.coordinator, _latest(service))
        assert fits.fit_inputs == {"carried": 2, "built": 1}
        # An ingest that re-rates a kept subject's items: rater counts stay, values change; read, built.
        known = SUBJECTS[7]
        items = ROWS.filter(np.asarray([s == known for s in ROWS.column(SUBJECT_ID).to_pylist()]))
        items = items.column(ITEM_ID).to_pylist()
        service.ingest(
            columns_table(
                {
                    RECORD_ID: [f"again-{i}" for i in range(len(items))],
                    SUBJECT_ID: [known] * len(items),
                    ITEM_ID: items,
                    RATING: [float(1 + (3 * i) % 5) for i in range(len(items))],
                }
            )
        )
        _served_is_from_scratch(fits, service.coordinator, _latest(service))
        assert fits.fit_inputs == {"carried": 2, "built": 2}
        service.forget([SUBJECTS[9]], timeout=120)
        _served_is_from_scratch(fits, service.coordinator, _latest(service))
        assert fits.fit_inputs == {"carried": 3, "built": 2}
    finally:
        service.close()


def test_a_solve_that_cannot_carry_over_drops_the_last_fits_matrices_before_it_builds(
    tmp_path, hasher, monkeypatch
) -> None:
    """Review: a version that is not a pure erasure was built while the last fit still held its
    three I x I matrices, which nothing would take (three more at the solve's peak)."""
    config = _job(tmp_path)
    coordinator = Coordinator(config.storage, hasher, None, pool_factory=local_pool)
    coordinator.train(ROWS, config)
    previous: list[object] = []
    held_while_building: list[bool] = []
    build = item_stats_dense.build

    def watched_build(*args, **kwargs):
        if previous and previous[-1] is not None:
            held_while_building.append(getattr(previous[-1], "_inputs", None) is not None)
        return build(*args, **kwargs)

    def solve(model, states, refit: Refit | None = None) -> StatisticsEnsemble:
        previous.append(refit.previous if refit is not None else None)
        return StatisticsEnsemble(model, states, refit=refit)

    monkeypatch.setattr(item_stats_dense, "build", watched_build)
    fits = ReadyFits(coordinator.store, solve=solve)
    try:
        fits.request(coordinator.require_manifest())
        _served_is_from_scratch(fits, coordinator, coordinator.require_manifest())
        coordinator.forget([SUBJECTS[4]])  # not vouched for as a pure erasure: the changed shard is read
        manifest = coordinator.require_manifest()
        fits.request(manifest)
        _served_is_from_scratch(fits, coordinator, manifest)
        assert held_while_building  # built (and solve_from_scratch's own fits) with the last fit's given up
        assert not any(held_while_building)
        assert fits.fit_inputs == {"carried": 0, "built": 2}
    finally:
        fits.close()


def test_the_service_solves_on_a_thread_at_its_ready_niceness(tmp_path, hasher) -> None:
    # Issue 22: the solve was preempted by the commit path and the shard actors (0.21 of a core
    # waiting); a thread favoured by service.ready_niceness makes a commit ready about 13 % sooner.
    import os

    from expunge.orchestrator.config import ServiceConfig

    process = os.getpriority(os.PRIO_PROCESS, 0)
    wanted = process + 3  # lowering priority needs no privilege: the test runs anywhere
    config = _job(tmp_path).model_copy(update={"service": ServiceConfig(ready_niceness=wanted)})
    Coordinator(config.storage, hasher, None, pool_factory=local_pool).train(ROWS, config)
    service = ErasureService(config, hasher, None, pool_factory=local_pool)
    try:
        fits = service.readiness.fits
        assert fits is not None
        _served_is_from_scratch(fits, service.coordinator, _latest(service))  # its first solve is done
        ready = fits._thread  # the solve's thread (other tests' services may have left theirs, named alike)
        assert ready.name == "expunge-ready"
        assert ready.native_id is not None
        assert os.getpriority(os.PRIO_PROCESS, ready.native_id) == wanted
        assert os.getpriority(os.PRIO_PROCESS, 0) == process  # the rest of the service keeps its niceness
    finally:
        service.close()
