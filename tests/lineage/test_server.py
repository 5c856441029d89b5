"""Lineage against a real ``mlflow server``: artifacts proxied to versioned S3, or on local disk; purge deletes
every stored copy, and a proxied root whose destination is unknown is refused before anything is written."""

from __future__ import annotations

import uuid

import boto3
import mlflow.pyfunc
import numpy as np
import pyarrow as pa
import pytest
from mlflow.exceptions import MlflowException

from expunge.orchestrator.config import TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.errors import ArtifactStoreNotErasable, ConfigError, PurgedVersionError
from expunge.orchestrator.registry import PURGED_BY_REQUEST, Lineage
from expunge.shards.rows import ITEM_ID, SUBJECT_DIGEST, SUBJECT_ID
from tests.engine import job
from tests.lineage._support import beyond_notice, email_rows, subjects

pytestmark = pytest.mark.integration

ROWS = email_rows(users=24, seed=4)


def _s3_object_versions(bucket: str) -> list[str]:
    """Every object version and delete marker in the bucket, as ``key@version``."""
    pages = boto3.client("s3").get_paginator("list_object_versions").paginate(Bucket=bucket)
    return [
        f"{o['Key']}@{o['VersionId']}"
        for page in pages
        for o in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
    ]


@pytest.mark.parametrize("artifacts", ["s3-proxied", "local-disk"])
def test_versions_serve_and_purge_through_a_tracking_server(artifacts, mlflow_server, tmp_path, hasher, monkeypatch):
    name = f"expunge-{artifacts}-{uuid.uuid4().hex[:6]}"
    local = tmp_path / "artifacts"
    # Where the server puts proxied files (its --artifacts-destination), so Expunge can erase every version.
    monkeypatch.setenv("MLFLOW_ARTIFACTS_DESTINATION", f"s3://{mlflow_server.bucket}/artifacts")
    tracking = TrackingConfig(
        uri=mlflow_server.uri,
        backend_store_uri=mlflow_server.backend_store_uri,
        experiment=name,
        model_name=name,
        artifact_location=local.as_uri() if artifacts == "local-disk" else None,
    )
    lineage = Lineage(tracking, str(tmp_path / "store"))
    coordinator = Coordinator(str(tmp_path / "store"), hasher, lineage, pool_factory=local_pool)
    coordinator.train(ROWS, job(shards=2, slices=2))
    first = lineage.client.get_model_version(name, "1").tags["expunge.logged_model_id"]

    def files_of(model_id: str) -> list[str]:
        if artifacts == "local-disk":
            return [str(p) for p in local.rglob("*") if p.is_file() and model_id in str(p)]
        return [k for k in _s3_object_versions(mlflow_server.bucket) if model_id in k]

    assert files_of(first), "version 1 was not stored where this test looks"
    coordinator.forget([subjects(ROWS)[2]], request_id=f"{name}-req")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}@production")
    digests = hasher.digest_many(ROWS.column(SUBJECT_ID).to_pylist())
    request = pa.table({SUBJECT_DIGEST: digests, ITEM_ID: ROWS.column(ITEM_ID)})
    assert np.array_equal(model.predict(request.to_pandas()), coordinator.predict(request))
    assert lineage.client.get_model_version(name, "1").tags[PURGED_BY_REQUEST] == f"{name}-req"
    with pytest.raises(PurgedVersionError, match=f"'{name}-req'.*that was version 2"):
        mlflow.pyfunc.load_model(f"models:/{name}/1")
    # On S3: no object version and no delete marker either, but one version of each file of the notice.
    assert files_of(first)
    assert beyond_notice(files_of(first), first) == []
    assert files_of(lineage.client.get_model_version(name, "2").tags["expunge.logged_model_id"])
    # Expunge's own loader, through the server: the current version loads, the purged one is refused.
    assert np.array_equal(lineage.load_version("2").predict(request.to_pandas()), coordinator.predict(request))
    with pytest.raises(PurgedVersionError, match=f"'{name}-req'"):
        lineage.load_version("1")


def test_proxied_artifacts_without_their_destination_are_refused_before_any_model_is_written(
    mlflow_server, tmp_path, monkeypatch
):
    monkeypatch.delenv("MLFLOW_ARTIFACTS_DESTINATION", raising=False)
    name = f"expunge-unknown-destination-{uuid.uuid4().hex[:6]}"
    tracking = TrackingConfig(
        uri=mlflow_server.uri, backend_store_uri=mlflow_server.backend_store_uri, experiment=name, model_name=name
    )
    with pytest.raises(ArtifactStoreNotErasable, match="MLFLOW_ARTIFACTS_DESTINATION"):
        Lineage(tracking, str(tmp_path / "store"))
    with pytest.raises(MlflowException):
        mlflow.MlflowClient(mlflow_server.uri).get_registered_model(name)  # nothing was registered


def test_a_server_without_its_database_cannot_purge_and_says_so(mlflow_server, tmp_path):
    with pytest.raises(ConfigError, match="backend_store_uri"):
        Lineage(TrackingConfig(uri=mlflow_server.uri), str(tmp_path / "store"))


def test_a_tracking_server_prints_nothing_on_stdout(mlflow_server, tmp_path, hasher, capfd):
    # Adversarial review: MLflow printed "View run ..." and "View experiment ..." links on stdout
    # for a tracking server, before the JSON that `train`, `forget` and `ingest` print there.
    name = f"expunge-quiet-{uuid.uuid4().hex[:6]}"
    tracking = TrackingConfig(
        uri=mlflow_server.uri,
        backend_store_uri=mlflow_server.backend_store_uri,
        experiment=name,
        model_name=name,
        artifact_location=(tmp_path / "artifacts").as_uri(),
    )
    lineage = Lineage(tracking, str(tmp_path / "store"))
    coordinator = Coordinator(str(tmp_path / "store"), hasher, lineage, pool_factory=local_pool)
    coordinator.train(ROWS, job(shards=2, slices=2))
    coordinator.forget([subjects(ROWS)[3]])
    assert "View " not in capfd.readouterr().out
