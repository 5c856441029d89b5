"""HTTP recommendations and predictions of item_stats name the version that answered, and never wait for a commit;
an erasure's view says when it was ready (``ready_at``).

Review (issue 22, eighth pass): each answer called ``model_version()``, which takes the coordinator's
lock (held by a commit under way) and looks the MLflow alias up, and it named the store's newest
version, not the solved one that answered.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from expunge.orchestrator.api.server import HttpServer
from expunge.orchestrator.config import ItemStatsConfig, ServiceConfig, StorageConfig, TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.service.core import ErasureService
from expunge.orchestrator.serving.ensemble import StatisticsEnsemble
from tests.api.conftest import ROWS, SUBJECTS
from tests.engine import job


def test_answers_name_the_solved_version_and_do_not_wait_for_the_coordinator(tmp_path: Path, monkeypatch):
    hasher = SubjectHasher(b"http-api-test-key-0123456789abcdef")
    config = job(model=ItemStatsConfig(factors=2, neighbours=5), shards=3, slices=2).model_copy(
        update={
            "storage": StorageConfig(uri=str(tmp_path / "store")),
            "tracking": TrackingConfig(enabled=False),
            "service": ServiceConfig(port=0, token_cache_s=0.0, window_ms=0),
        }
    )
    Coordinator(config.storage, hasher, None, pool_factory=local_pool).train(ROWS, config)
    service = ErasureService(config, hasher, None, pool_factory=local_pool)
    server = HttpServer(service, config.service)
    fits = service.readiness.fits
    assert fits is not None
    release = threading.Event()

    def held(model, states):  # the next version stays unsolved until released
        release.wait(60)
        return StatisticsEnsemble(model, states)

    try:
        url = server.start()
        solved = service.coordinator.require_manifest().version
        assert fits.wait(solved, timeout=120)
        monkeypatch.setattr(fits, "_solve", held)
        receipt = service.forget([SUBJECTS[0]], timeout=120)
        assert receipt.model_version_after == solved + 1
        token = server.tokens.create("client", ["recommend", "erasure:read"])[1]
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            with service._work:  # a commit under way holds the coordinator
                answer = client.post("/v1/recommendations", json={"subject_id": SUBJECTS[-1], "k": 3})
                rows = {"rows": [{"subject_id": SUBJECTS[-1], "item_id": 1}]}
                predictions = client.post("/v1/predictions", json=rows)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_version"] == solved  # the solved version answered, not the store's newest
            assert predictions.json()["model_version"] == solved
            view = client.get(f"/v1/erasures/{receipt.request_id}").json()
            assert view["committed_at"] is not None
            assert view["ready_at"] is None  # its version is not solved yet: the subject is masked meanwhile
            release.set()
            assert fits.wait(solved + 1, timeout=120)
            again = client.post("/v1/recommendations", json={"subject_id": SUBJECTS[-1], "k": 3})
            assert again.json()["model_version"] == solved + 1
            service.wait(receipt.request_id, "committed", timeout=10)
            statuses = [client.get(f"/v1/erasures/{receipt.request_id}").json()]
            while statuses[-1]["ready_at"] is None and len(statuses) < 600:  # marked after the swap, on its thread
                time.sleep(0.1)
                statuses.append(client.get(f"/v1/erasures/{receipt.request_id}").json())
            assert statuses[-1]["ready_at"] >= statuses[-1]["committed_at"]
    finally:
        release.set()
        server.stop()
        service.close()
