"""Physical erasure and scans, on local folders and on a real S3 API (moto server), versioned too."""

from __future__ import annotations

import boto3
import pytest

from expunge.orchestrator.config import StorageConfig, SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.errors import StorageConflictError
from expunge.orchestrator.evidence.exactness import constituents_equal
from expunge.orchestrator.evidence.scan import scan_store
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from expunge.shards.store import ObjectStore
from tests.engine import from_scratch, job, subject_in_slice, without

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=40, items=25, ratings_per_user=6, seed=5))
SUBJECTS = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))


@pytest.fixture(params=["local", "s3", "s3-versioned"])
def storage(request, tmp_path) -> StorageConfig:
    if request.param == "local":
        return StorageConfig(uri=str(tmp_path / "store"))
    bucket = request.getfixturevalue("s3_versioned_bucket" if request.param == "s3-versioned" else "s3_bucket")
    return StorageConfig(uri=f"s3://{bucket}/expunge")


def test_scan_finds_the_subject_before_and_nothing_after(storage, tmp_path, hasher):
    coordinator = Coordinator(storage, hasher, pool_factory=local_pool)
    config = job(shards=2, slices=3)
    coordinator.train(ROWS, config)
    subject = subject_in_slice(coordinator, hasher, SUBJECTS, 1)
    digest = hasher.digest(subject)
    before = scan_store(ObjectStore(storage), subject, digest)
    assert {f.kind for f in before.findings} >= {"rows", "placement", "checkpoint-parameters", "checkpoint-lineage"}

    receipt = coordinator.forget([subject])
    after = scan_store(ObjectStore(storage), subject, digest)
    assert after.clean, after.findings
    assert receipt.deleted_objects  # keys (and versions on S3) are listed in the receipt
    assert all(ObjectStore(storage).list_versions(d.split("?")[0]) == [] for d in receipt.deleted_objects)

    reference = from_scratch(tmp_path, coordinator, without(ROWS, [subject]), config, hasher)
    assert all(constituents_equal(coordinator.constituent_tensors(), reference.constituent_tensors()).values())


def test_versioned_bucket_keeps_no_old_version_of_erased_data(s3_versioned_bucket, hasher):
    storage = StorageConfig(uri=f"s3://{s3_versioned_bucket}/expunge")
    coordinator = Coordinator(storage, hasher, pool_factory=local_pool)
    coordinator.train(ROWS, job(shards=2, slices=2))
    coordinator.train(ROWS, job(shards=2, slices=2))  # retraining rewrites objects: more versions
    subject = SUBJECTS[4]
    coordinator.forget([subject])
    client = boto3.client("s3")
    listing = client.list_object_versions(Bucket=s3_versioned_bucket)
    assert not listing.get("DeleteMarkers")  # erased for real, not hidden behind markers
    assert scan_store(ObjectStore(storage), subject, hasher.digest(subject)).clean


def test_plain_rm_on_a_versioned_bucket_would_leave_the_data(s3_versioned_bucket, hasher):
    """Why Expunge deletes versions: the scan sees through a delete marker."""
    storage = StorageConfig(uri=f"s3://{s3_versioned_bucket}/expunge")
    coordinator = Coordinator(storage, hasher, pool_factory=local_pool)
    coordinator.train(ROWS, job(shards=1, slices=1))
    store = ObjectStore(storage)
    (slice_key,) = [k for k in store.list_keys("shards") if "/slices/" in k]
    store.fs.rm(store.url(slice_key))  # s3fs only adds a delete marker
    report = scan_store(store, SUBJECTS[0], hasher.digest(SUBJECTS[0]))
    assert any(f.key == slice_key and f.kind == "rows" for f in report.findings)


class _InterleavingPool:
    """A pool seam that lets another writer commit while this one is mid-erasure."""

    def __init__(self, inner, before_erase):
        self.inner, self.before_erase = inner, before_erase

    def call(self, method, args_by_shard):
        if method == "erase":
            self.before_erase()
        return self.inner.call(method, args_by_shard)

    def shutdown(self):
        self.inner.shutdown()


@pytest.mark.parametrize("same_shard", [False, True])
def test_racing_writers_one_wins_the_other_changes_nothing(storage, hasher, same_shard):
    first = Coordinator(storage, hasher, pool_factory=local_pool)
    first.train(ROWS, job(shards=2, slices=2))
    homes = first.placement_index().home_cells()
    mine = next(s for s in SUBJECTS if homes[hasher.digest(s)].shard == 0)
    theirs = next(s for s in SUBJECTS if homes[hasher.digest(s)].shard == (0 if same_shard else 1) and s != mine)

    def interleaved(*args):
        return _InterleavingPool(local_pool(*args), lambda: first.forget([theirs]))

    second = Coordinator(storage, hasher, pool_factory=interleaved)
    with pytest.raises(StorageConflictError):
        second.forget([mine])
    store = ObjectStore(storage)
    # The loser's objects were built from v1, which still held `theirs`: none may survive.
    assert scan_store(store, theirs, hasher.digest(theirs)).clean
    assert store.list_keys("ensemble") == ["ensemble/00000001.json", "ensemble/00000002.json"]
    latest = first.catalog.latest()
    assert latest is not None
    assert latest.request_id == first.manifest.request_id  # the winner's version is published
    retry = Coordinator(storage, hasher, pool_factory=local_pool)  # reload and retry succeeds
    receipt = retry.forget([mine])
    assert receipt.status == "erased"
    assert receipt.model_version_after == 3
    for subject in (mine, theirs):
        assert scan_store(store, subject, hasher.digest(subject)).clean


def test_versioning_turned_on_after_training_still_erases_the_null_versions(s3_bucket, hasher):
    storage = StorageConfig(uri=f"s3://{s3_bucket}/expunge")
    coordinator = Coordinator(storage, hasher, pool_factory=local_pool)
    coordinator.train(ROWS, job(shards=2, slices=2))  # objects get version id "null"
    boto3.client("s3").put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    subject = SUBJECTS[2]
    receipt = coordinator.forget([subject])
    assert any(d.endswith("?versionId=null") for d in receipt.deleted_objects)
    listing = boto3.client("s3").list_object_versions(Bucket=s3_bucket)
    assert not listing.get("DeleteMarkers")
    assert scan_store(ObjectStore(storage), subject, hasher.digest(subject)).clean
