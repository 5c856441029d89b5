"""A new version's changed checkpoints are decoded beside the solve under way; the fit is still the exact one."""

from __future__ import annotations

import threading

from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.serving.ensemble import StatisticsEnsemble
from expunge.orchestrator.serving.ready import ReadyFits, solve_from_scratch
from tests.service.test_commit_latency_ready_sum import ROWS, SUBJECTS, _buffers, _fit_arrays, _job


def test_the_next_solve_takes_the_changed_shards_decoded_beside_the_one_under_way_and_fits_the_same_bits(
    tmp_path, hasher
):
    config = _job(tmp_path)
    coordinator = Coordinator(config.storage, hasher, None, pool_factory=local_pool)
    coordinator.train(ROWS, config)
    first = coordinator.require_manifest()
    solving, release = threading.Event(), threading.Event()

    def held_first(model, states):  # the first solve stays under way until the next version is decoded
        solving.set()
        release.wait(120)
        return StatisticsEnsemble(model, states)

    fits = ReadyFits(coordinator.store, solve=held_first)
    try:
        fits.request(first)
        assert solving.wait(120)
        receipt = coordinator.forget([SUBJECTS[3]])
        second = coordinator.require_manifest()
        assert second.version == receipt.model_version_after
        changed = [
            s for s, (a, b) in enumerate(zip(first.shard_versions, second.shard_versions, strict=True)) if a != b
        ]
        assert changed
        predecoder = fits.predecoder
        decoded, taken = predecoder.counts["decoded"], predecoder.counts["taken"]  # the first version's
        fits.request(second)
        for _ in range(120_000):  # decoded while the first solve is still under way
            if predecoder.counts["decoded"] >= decoded + len(changed):
                break
            threading.Event().wait(0.001)
        assert predecoder.counts["decoded"] == decoded + len(changed)
        release.set()
        assert fits.wait(second.version, timeout=120)
        assert predecoder.counts["taken"] == taken + len(changed)
        served = fits.served()
        assert served is not None
        scratch = solve_from_scratch(coordinator.store, second)
        assert _buffers(served.ensemble.state) == _buffers(scratch.state)
        assert _fit_arrays(served.ensemble) == _fit_arrays(scratch)
    finally:
        release.set()
        fits.close()


def test_a_decode_ahead_that_fails_leaves_the_read_to_the_solve(tmp_path, hasher, monkeypatch):
    config = _job(tmp_path)
    coordinator = Coordinator(config.storage, hasher, None, pool_factory=local_pool)
    coordinator.train(ROWS, config)
    fits = ReadyFits(coordinator.store)
    try:
        assert fits.wait(0, timeout=0) is False  # nothing requested yet
        monkeypatch.setattr(fits.predecoder._catalog, "shard_manifest", _unreachable)
        fits.request(coordinator.require_manifest())
        assert fits.wait(coordinator.require_manifest().version, timeout=120)
        served = fits.served()
        assert served is not None
        scratch = solve_from_scratch(coordinator.store, coordinator.require_manifest())
        assert _buffers(served.ensemble.state) == _buffers(scratch.state)
        assert fits.predecoder.counts["taken"] == 0
    finally:
        fits.close()


def _unreachable(*args, **kwargs):
    raise OSError("the store did not answer")
