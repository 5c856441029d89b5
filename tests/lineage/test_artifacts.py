"""MLflow model files on S3: purging deletes every object version and delete marker, and a root whose copies
could not all be deleted is refused when the Lineage opens, before anything is written."""

from __future__ import annotations

import boto3
import pytest
from mlflow import MlflowClient

from expunge.orchestrator.config import TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.errors import ArtifactStoreNotErasable
from expunge.orchestrator.registry import PURGED_BY_REQUEST, Lineage
from tests.conftest import S3_ENDPOINT
from tests.engine import job
from tests.lineage._support import beyond_notice, email_rows, subjects

pytestmark = pytest.mark.integration

ROWS = email_rows(users=16, seed=6)


def _object_versions(bucket: str, needle: str) -> list[str]:
    pages = boto3.client("s3").get_paginator("list_object_versions").paginate(Bucket=bucket)
    found = [o for page in pages for o in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]]
    return [f"{o['Key']}@{o['VersionId']}" for o in found if needle in o["Key"]]


def test_purging_on_a_versioned_bucket_deletes_every_object_version(s3_versioned_bucket, tmp_path, hasher, monkeypatch):
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", S3_ENDPOINT)  # MLflow's own S3 client
    tracking = TrackingConfig(
        uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        experiment="on-s3",
        model_name="expunge-on-s3",
        artifact_location=f"s3://{s3_versioned_bucket}/mlflow",
    )
    lineage = Lineage(tracking, str(tmp_path / "store"))
    coordinator = Coordinator(str(tmp_path / "store"), hasher, lineage, pool_factory=local_pool)
    coordinator.train(ROWS, job(shards=2, slices=2))
    first = lineage.client.get_model_version("expunge-on-s3", "1").tags["expunge.logged_model_id"]
    # An overwrite, as a re-upload would make: the bucket now holds two versions of one file.
    location = lineage.client.get_logged_model(first).artifact_location
    key = f"{location.removeprefix(f's3://{s3_versioned_bucket}/')}/MLmodel"
    boto3.client("s3").put_object(Bucket=s3_versioned_bucket, Key=key, Body=b"x")
    assert len(_object_versions(s3_versioned_bucket, key)) == 2

    coordinator.forget([subjects(ROWS)[1]], request_id="ticket-s3")
    assert lineage.client.get_model_version("expunge-on-s3", "1").tags[PURGED_BY_REQUEST] == "ticket-s3"
    # No version and no delete marker of its files: one version of each file of the purge notice, no more.
    assert _object_versions(s3_versioned_bucket, first)
    assert beyond_notice(_object_versions(s3_versioned_bucket, first), first) == []
    second = lineage.client.get_model_version("expunge-on-s3", "2").tags["expunge.logged_model_id"]
    assert _object_versions(s3_versioned_bucket, second)
    assert _object_versions(s3_versioned_bucket, ".expunge-probe") == []  # the start-up check cleans up


@pytest.mark.parametrize(
    ("root", "says"),
    [
        ("s3://expunge-no-such-bucket/mlflow", "versioning state of bucket"),
        ("gs://expunge-bucket/mlflow", "gs://"),
        ("mlflow-artifacts:/mlflow", "MLFLOW_ARTIFACTS_DESTINATION"),
    ],
)
def test_a_root_that_cannot_be_fully_erased_is_refused_before_anything_is_written(
    root, says, s3_server, tmp_path, monkeypatch
):
    monkeypatch.delenv("MLFLOW_ARTIFACTS_DESTINATION", raising=False)
    tracking = TrackingConfig(
        uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="refused", model_name="refused", artifact_location=root
    )
    with pytest.raises(ArtifactStoreNotErasable, match=says) as refused:
        Lineage(tracking, str(tmp_path / "store"))
    client = MlflowClient(tracking.uri)
    assert client.get_experiment_by_name("refused") is None
    assert client.search_registered_models() == []
    import pickle

    assert str(pickle.loads(pickle.dumps(refused.value))) == str(refused.value)


def test_a_linked_folder_inside_a_versions_files_is_refused_not_left_behind(tmp_path):
    # Adversarial review: deleting the folder deleted the link and kept the weights it pointed to,
    # and the registry check then counted no file left.
    from expunge.orchestrator.registry.artifacts import ArtifactEraser

    version = tmp_path / "artifacts" / "models" / "m-1"
    version.mkdir(parents=True)
    (version / "MLmodel").write_text("flavors: {}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "shards.pt").write_bytes(b"weights")
    (version / "weights").symlink_to(elsewhere)
    with pytest.raises(ArtifactStoreNotErasable, match="weights is a symbolic link inside a model version's files"):
        ArtifactEraser().erase(str(version), str(tmp_path / "artifacts"))
    assert (version / "MLmodel").exists()  # nothing deleted: retried once the files are in place
    assert (elsewhere / "shards.pt").exists()
    (version / "weights").unlink()
    (elsewhere / "shards.pt").rename(tmp_path / "shards.pt")
    assert ArtifactEraser().erase(str(version), str(tmp_path / "artifacts")) == 1
    assert not version.exists()
