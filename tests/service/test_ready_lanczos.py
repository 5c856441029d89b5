"""Every served item_stats version is the from-scratch solve bit for bit where block Lanczos fits (issue 22, ninth pass; adversarial review)."""

from __future__ import annotations

import numpy as np

from expunge.orchestrator.config import ItemStatsConfig, SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.service.core import ErasureService
from expunge.orchestrator.service.ingestion import columns_table
from expunge.orchestrator.serving.ready import solve_from_scratch
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.models import block_lanczos
from expunge.shards.rows import ITEM_ID, RATING, RECORD_ID, SUBJECT_ID
from tests.engine import service_job

ITEMS = 400
ROWS = synthetic_ratings(SyntheticRatingsConfig(users=500, items=ITEMS, ratings_per_user=40, seed=5))
SUBJECTS = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))
STATS = ItemStatsConfig(factors=3, neighbours=5)


def _bits(ensemble):
    fit = ensemble.fit
    found = {name: tensor.numpy().tobytes() for name, tensor in ensemble.state.state_dict().items()}
    found.update({n: np.asarray(getattr(fit, n)).tobytes() for n in ("ranking", "similarity", "factors", "item_bias")})
    found["mu"] = np.float64(fit.mu).tobytes()
    return found


def test_every_served_version_is_the_from_scratch_solve(tmp_path, hasher, monkeypatch):
    paths = []
    real = block_lanczos._block_lanczos

    def spy(*args):
        found = real(*args)
        paths.append("lanczos" if found is not None else "fallback")
        return found

    monkeypatch.setattr(block_lanczos, "_block_lanczos", spy)
    config = service_job(tmp_path, STATS)
    Coordinator(config.storage, hasher, None, pool_factory=local_pool).train(ROWS, config)
    service = ErasureService(config, hasher, None, pool_factory=local_pool)
    fits = service.readiness.fits
    coordinator = service.coordinator

    def check():
        manifest = coordinator.require_manifest()
        assert fits.wait(manifest.version, timeout=300)
        served = fits.served()
        assert served.version == manifest.version
        assert _bits(served.ensemble) == _bits(solve_from_scratch(coordinator.store, manifest))

    try:
        check()
        for group in ([SUBJECTS[0]], [SUBJECTS[7], SUBJECTS[99]]):
            service.forget(group, timeout=300)
            check()
        newcomers = {
            RECORD_ID: [f"add-{u}-{i}" for u in range(3) for i in range(6)],
            SUBJECT_ID: [f"new-{u}" for u in range(3) for _ in range(6)],
            ITEM_ID: [(37 * u + 11 * i) % ITEMS for u in range(3) for i in range(6)],
            RATING: [float(1 + (u + i) % 5) for u in range(3) for i in range(6)],
        }
        service.ingest(columns_table(newcomers))
        check()
        service.forget(["new-1", SUBJECTS[3]], timeout=300)
        check()
    finally:
        service.close()

    assert paths, "no fit ran block Lanczos"
    assert set(paths) == {"lanczos"}, paths  # the catalogue is large enough, the spectrum has a gap
