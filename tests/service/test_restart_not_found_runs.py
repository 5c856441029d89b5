"""A not-found request committed before a crash, not yet in MLflow: the restart records its run, once."""

from __future__ import annotations

import time
from pathlib import Path

from expunge.orchestrator.config import JobConfig, ServiceConfig, StorageConfig, SyntheticRatingsConfig, TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.service.core import ErasureService
from expunge.orchestrator.service.followup import FollowUp
from expunge.orchestrator.service.journal import Journal
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.store import ObjectStore
from tests.engine import job

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=20, items=10, ratings_per_user=4, seed=5))


def _not_found_runs(tracking: TrackingConfig, request_id: str) -> list[object]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking.uri)
    experiment = client.get_experiment_by_name(tracking.experiment)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    return [
        r
        for r in runs
        if r.data.tags.get("expunge.request_id") == request_id and r.data.tags.get("expunge.outcome") == "not_found"
    ]


def test_a_not_found_request_committed_before_a_stop_gets_its_run_at_the_restart_and_only_one(
    tmp_path: Path, hasher, monkeypatch
):
    store = tmp_path / "store"
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="svc", model_name="svc-model")
    config: JobConfig = job(shards=2, slices=2).model_copy(
        update={
            "storage": StorageConfig(uri=str(store)),
            "tracking": TrackingConfig(enabled=False),
            "service": ServiceConfig(window_ms=0),
        }
    )
    Coordinator(config.storage, hasher, Lineage(tracking, str(store)), pool_factory=local_pool).train(ROWS, config)

    # MLflow is not reached before the service stops (a crash between the commit and its registration).
    monkeypatch.setattr(FollowUp, "register", lambda self: time.sleep(0.05))
    service = ErasureService(config, hasher, Lineage(tracking, str(store)), pool_factory=local_pool, warm=False)
    try:
        request_id = service.submit(["nobody-here"])
        status = service.wait(request_id, "committed", timeout=120)
        assert status.receipt is not None and status.receipt.status == "not_found"
        assert service.journaling.drain(timeout=120)
    finally:
        service.close()
    monkeypatch.undo()
    journal = Journal(ObjectStore(config.storage))
    assert request_id in journal.ids("committed") and request_id not in journal.ids("registered")
    assert _not_found_runs(tracking, request_id) == []

    for _ in range(2):  # the second restart: the run is written, its journal record lost (a crash between)
        restarted = ErasureService(config, hasher, Lineage(tracking, str(store)), pool_factory=local_pool, warm=False)
        try:
            assert restarted.wait(request_id, "registered", timeout=120).receipt is not None
        finally:
            restarted.close()
        ObjectStore(config.storage).delete([f"journal/registered/{request_id}.json"])

    runs = _not_found_runs(tracking, request_id)
    assert len(runs) == 1, runs
