"""What MLflow holds after erasures: versions, erasure runs, purged versions, and no personal data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest

from expunge.orchestrator.config import MLPConfig, TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError, PurgedVersionError
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.registry import PURGED_BY_REQUEST, Lineage
from expunge.orchestrator.serving.servable import rows_from_frame
from expunge.pipelines.datasets import synthetic_tabular
from expunge.shards.rows import FEATURES, ITEM_ID, SUBJECT_ID
from tests.engine import job
from tests.lineage._support import SERVING_KEY, beyond_notice, email_rows, personal_data_hits, subjects

ROWS = email_rows()
MODEL = "expunge-lineage"
KEY = SERVING_KEY.encode()


@dataclass
class Deployment:
    root: Path
    lineage: Lineage
    coordinator: Coordinator
    receipts: list[ErasureReceipt]
    erased: list[str]
    model_ids: dict[str, str]  # registry version -> LoggedModel id


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """Train (v1), erase one subject (v2), erase two more (v3): in-process shards, local sqlite."""
    root = tmp_path_factory.mktemp("lineage")
    # Charts asked for (they are off by default); test_item_stats_serving's deployment shows them absent.
    tracking = TrackingConfig(
        uri=f"sqlite:///{root / 'mlflow.db'}", experiment="lineage", model_name=MODEL, charts=True
    )
    lineage = Lineage(tracking, str(root / "store"))
    coordinator = Coordinator(str(root / "store"), SubjectHasher(KEY), lineage, pool_factory=local_pool)
    coordinator.train(ROWS, job(shards=3, slices=3))
    erased = [subjects(ROWS)[3], subjects(ROWS)[11], subjects(ROWS)[20]]
    model_ids = {"1": lineage.client.get_model_version(MODEL, "1").tags["expunge.logged_model_id"]}
    receipts = [coordinator.forget(erased[:1], request_id="ticket-1")]
    model_ids["2"] = lineage.client.get_model_version(MODEL, "2").tags["expunge.logged_model_id"]
    receipts.append(coordinator.forget(erased[1:], request_id="ticket-2"))
    model_ids["3"] = lineage.client.get_model_version(MODEL, "3").tags["expunge.logged_model_id"]
    return Deployment(root, lineage, coordinator, receipts, erased, model_ids)


def _erasure_run(deployment: Deployment, request_id: str):  # type: ignore[no-untyped-def]
    runs = deployment.lineage.client.search_runs(
        [deployment.lineage.experiment_id], filter_string=f"tags.`expunge.request_id` = '{request_id}'"
    )
    assert len(runs) == 1
    return runs[0]


def test_every_commit_is_a_version_and_the_alias_follows_the_last_one(deployment):
    client = deployment.lineage.client
    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{MODEL}'")}
    assert sorted(versions, key=int) == ["1", "2", "3"]
    assert deployment.lineage.current_version() == "3"
    assert versions["3"].tags["expunge.parent_version"] == "2"
    assert versions["3"].tags["expunge.request_id"] == "ticket-2"
    assert [r.registry_version_after for r in deployment.receipts] == ["2", "3"]


def test_the_erasure_run_records_digests_retrained_slices_metrics_receipt_and_chart(deployment):
    client = deployment.lineage.client
    receipt = deployment.receipts[1]
    run = _erasure_run(deployment, "ticket-2")
    hasher = SubjectHasher(KEY)
    for subject in deployment.erased[1:]:
        assert run.data.tags[f"expunge.subject_digest.{hasher.digest(subject)}"] == "erased"
    assert run.data.params["registry_version_before"] == "2"
    assert run.data.params["registry_version_after"] == "3"
    for shard in receipt.shards:
        assert run.data.params[f"shard_{shard.shard}.slices_retrained"] == ",".join(map(str, shard.slices_retrained))
        assert run.data.params[f"shard_{shard.shard}.restarted_from"] == (shard.restarted_from or "scratch")
        assert run.data.metrics[f"retrain_seconds_shard_{shard.shard}"] == pytest.approx(shard.seconds)
    assert run.data.metrics["rows_removed"] == receipt.rows_removed > 0
    assert run.data.metrics["erasure_seconds"] == pytest.approx(receipt.seconds)
    # One meaning of speed-up: the receipt's, logged as is; both sides are the retraining phase only.
    assert receipt.full_retrain_seconds > 0
    assert receipt.retrain_seconds > 0
    assert run.data.metrics["speedup"] == pytest.approx(receipt.speedup)
    assert receipt.speedup == pytest.approx(receipt.full_retrain_seconds / receipt.retrain_seconds)
    assert run.data.metrics["full_retrain_seconds"] == pytest.approx(receipt.full_retrain_seconds)

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"receipt.json", "retrain_seconds.png", "ensemble"} <= artifacts
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "receipt.json")).read_text())
    assert logged["subject_digests"] == list(receipt.subject_digests)
    assert (logged["registry_version_before"], logged["registry_version_after"]) == ("2", "3")
    png = Path(client.download_artifacts(run.info.run_id, "retrain_seconds.png")).read_bytes()
    assert png.startswith(b"\x89PNG")

    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == [f"expunge-shard-{s:04d}" for s in range(3)]
    contexts = {name: {t.key: t.value for t in i.tags}["mlflow.data.context"] for name, i in inputs.items()}
    assert {n for n, c in contexts.items() if c == "retrained"} == {
        f"expunge-shard-{s:04d}" for s in receipt.affected_shards
    }


def test_purged_versions_do_not_load_leave_no_files_and_keep_their_lineage(deployment, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", deployment.lineage.uri)
    client = deployment.lineage.client
    for version, request in (("1", "ticket-1"), ("2", "ticket-2")):
        purged = client.get_model_version(MODEL, version)
        assert purged.tags[PURGED_BY_REQUEST] == request
        assert purged.tags["expunge.kind"] in {"train", "erasure"}  # lineage tags survive
        with pytest.raises(PurgedVersionError, match=f"'{request}'"):
            mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")
        model_id = deployment.model_ids[version]
        left = [p for p in deployment.root.rglob("*") if p.is_file() and model_id in str(p)]
        assert left  # the purge notice, and no more
        assert beyond_notice(left, model_id) == []
    assert _erasure_run(deployment, "ticket-1").info.lifecycle_stage == "active"
    live_files = [p for p in deployment.root.rglob("*") if p.is_file() and deployment.model_ids["3"] in str(p)]
    assert live_files  # the scan above would catch files if they were there
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@production")
    frame = pd.DataFrame({"subject_digest": [""], ITEM_ID: [1]})
    assert model.predict(frame).shape == (1,)


def test_no_raw_subject_id_reaches_mlflow(deployment):
    everyone = subjects(ROWS)
    assert personal_data_hits(deployment.lineage.uri, everyone) == []
    # The scan can fail: a leaked id is found.
    run = _erasure_run(deployment, "ticket-1")
    deployment.lineage.client.set_tag(run.info.run_id, "leak", deployment.erased[0])
    try:
        assert personal_data_hits(deployment.lineage.uri, everyone) == [
            f"run erasure-ticket-1: {deployment.erased[0]!r}"
        ]
    finally:
        deployment.lineage.client.delete_tag(run.info.run_id, "leak")


def test_raw_ids_need_the_key_in_the_serving_process(deployment, monkeypatch):
    manifest = deployment.coordinator.manifest
    assert manifest is not None
    frame = pd.DataFrame({SUBJECT_ID: subjects(ROWS)[:2], ITEM_ID: [1, 2]})
    monkeypatch.delenv("EXPUNGE_SUBJECT_KEY", raising=False)
    with pytest.raises(ConfigError, match="EXPUNGE_SUBJECT_KEY"):
        rows_from_frame(frame, manifest)
    monkeypatch.setenv("EXPUNGE_SUBJECT_KEY", SERVING_KEY)
    rows = rows_from_frame(frame, manifest)
    assert rows.column("subject_digest").to_pylist() == SubjectHasher(KEY).digest_many(frame[SUBJECT_ID])
    with pytest.raises(ConfigError, match="item_id"):
        rows_from_frame(frame.drop(columns=[ITEM_ID]), manifest)


def test_an_mlp_version_serves_class_probabilities_like_the_live_ensemble(tmp_path, hasher, monkeypatch):
    rows = synthetic_tabular(subjects=24, rows_per_subject=5, features=4, seed=3)
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="mlp", model_name="expunge-mlp")
    lineage = Lineage(tracking, str(tmp_path / "store"))
    coordinator = Coordinator(str(tmp_path / "store"), hasher, lineage, pool_factory=local_pool)
    coordinator.train(rows, job(model=MLPConfig(num_features=4, hidden=(8,)), shards=2, slices=2))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", lineage.uri)
    model = mlflow.pyfunc.load_model("models:/expunge-mlp@production")
    served = model.predict(rows.select([FEATURES]).to_pandas())
    assert served.shape == (len(rows), 2)
    assert np.array_equal(served, coordinator.predict(rows))


def test_a_request_that_finds_nobody_leaves_a_run_and_no_version(deployment):
    lineage = deployment.lineage
    manifest = deployment.coordinator.manifest
    assert manifest is not None
    stranger = SubjectHasher(KEY).digest("nobody@example.org")
    missed = ErasureReceipt(
        request_id="ticket-miss",
        status="not_found",
        subject_digests=(stranger,),
        not_found_digests=(stranger,),
        model_version_before=manifest.version,
        model_version_after=manifest.version,
    )
    assert lineage.record_request(missed, manifest) == "3"

    run = _erasure_run(deployment, "ticket-miss")
    assert run.info.status == "FINISHED"
    assert run.data.tags["expunge.kind"] == "erasure"
    assert run.data.tags["expunge.outcome"] == "not_found"
    assert run.data.tags[f"expunge.subject_digest.{stranger}"] == "not_found"
    assert run.data.tags["expunge.registry_version"] == "3"
    assert run.data.params["ensemble_version_checked"] == str(manifest.version)
    logged = json.loads(Path(lineage.client.download_artifacts(run.info.run_id, "receipt.json")).read_text())
    assert logged["status"] == "not_found"
    assert (logged["registry_version_before"], logged["registry_version_after"]) == ("3", "3")
    assert sorted(str(v.version) for v in lineage.client.search_model_versions(f"name = '{MODEL}'")) == ["1", "2", "3"]
    assert lineage.current_version() == "3"
    assert _erasure_run(deployment, "ticket-2").data.tags["expunge.outcome"] == "erased"
    with pytest.raises(ValueError, match="record_request"):
        lineage.record_erasure(missed, manifest, "3")
