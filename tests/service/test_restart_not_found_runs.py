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


def _trained(tmp_path: Path, hasher) -> tuple[Path, TrackingConfig, JobConfig]:
    """A trained store recorded in a sqlite MLflow, and the service's job for it (MLflow given apart)."""
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
    return store, tracking, config


def test_a_not_found_request_committed_before_a_stop_gets_its_run_at_the_restart_and_only_one(
    tmp_path: Path, hasher, monkeypatch
):
    store, tracking, config = _trained(tmp_path, hasher)

    # MLflow is not reached before the service stops (a crash between the commit and its registration).
    monkeypatch.setattr(FollowUp, "register", lambda self, *yield_to: time.sleep(0.05))
    service = ErasureService(config, hasher, Lineage(tracking, str(store)), pool_factory=local_pool, warm=False)
    try:
        request_id = service.submit(["nobody-here"])
        status = service.wait(request_id, "committed", timeout=120)
        assert status.receipt is not None
        assert status.receipt.status == "not_found"
        assert service.journaling.drain(timeout=120)
    finally:
        service.close()
    monkeypatch.undo()
    journal = Journal(ObjectStore(config.storage))
    assert request_id in journal.ids("committed")
    assert request_id not in journal.ids("registered")
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


def test_a_not_found_run_cut_short_by_mlflow_is_recorded_again_in_full(tmp_path: Path, hasher, monkeypatch):
    """Review: the retry found the half-written run by its tags and reused it (no params, no receipt)."""
    import mlflow

    store, tracking, config = _trained(tmp_path, hasher)
    real, failed = mlflow.MlflowClient.log_batch, []

    def once_unreachable(self, run_id, *args, **kwargs):
        if not failed and any(p.key == "registry_version_checked" for p in kwargs.get("params") or []):
            failed.append(run_id)
            raise mlflow.exceptions.MlflowException("the tracking server did not answer")
        return real(self, run_id, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", once_unreachable)
    service = ErasureService(config, hasher, Lineage(tracking, str(store)), pool_factory=local_pool, warm=False)
    try:
        request_id = service.submit(["nobody-here"])
        assert service.wait(request_id, "registered", timeout=120).receipt is not None
    finally:
        service.close()
    assert failed  # the fault was hit
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking.uri)
    finished = [r for r in _not_found_runs(tracking, request_id) if r.info.status == "FINISHED"]
    assert len(finished) == 1
    assert finished[0].data.params["request_id"] == request_id
    assert "receipt.json" in [a.path for a in client.list_artifacts(finished[0].info.run_id)]
