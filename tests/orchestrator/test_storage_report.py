"""The storage report: every stored byte counted once, by kind, against the files on disk."""

from __future__ import annotations

import os

import pytest

from expunge.orchestrator.catalog import Catalog
from expunge.orchestrator.config import SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.evidence.storage_report import classify_key, stored_bytes, summarise_sizes
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from expunge.shards.store import ObjectStore
from tests.engine import job

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=30, items=20, ratings_per_user=5, seed=3))


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("shards/0003/slices/0002-ab.parquet", "slices"),
        ("shards/0003/checkpoints/0002-ab.pt", "checkpoints"),
        ("shards/0003/manifests/00000002.json", "shard_manifests"),
        ("ensemble/00000001.json", "ensemble_manifests"),
        ("placement/ab.parquet", "placement"),
        ("receipts/chain/00000007.json", "other"),
        ("tombstones/00000004.json", "other"),
    ],
)
def test_keys_are_classified_by_the_storage_layout(key, kind):
    assert classify_key(key) == kind


def test_summary_adds_kinds_up_and_counts_referenced_objects_only_once():
    sizes = {"shards/0000/slices/0000-a.parquet": 100, "shards/0000/checkpoints/0000-a.pt": 50, "receipts/1.json": 7}
    report = summarise_sizes(sizes, rows=10, referenced={"shards/0000/slices/0000-a.parquet", "absent"})
    assert (report.slice_bytes, report.checkpoint_bytes, report.other_bytes, report.total_bytes) == (100, 50, 7, 157)
    assert report.referenced_bytes == 100
    assert report.bytes_per_row == pytest.approx(15.7)
    assert report.per_row()["slices"] == pytest.approx(10.0)
    assert summarise_sizes({}, rows=0, referenced=set()).bytes_per_row == 0.0


def test_report_matches_the_files_of_a_trained_and_erased_store(tmp_path, hasher):
    root = tmp_path / "store"
    coordinator = Coordinator(str(root), hasher, pool_factory=local_pool)
    coordinator.train(ROWS, job(shards=2, slices=2))
    coordinator.forget([ROWS.column(SUBJECT_ID)[0].as_py()])
    store = ObjectStore(str(root))
    catalog = Catalog(store)
    manifest = catalog.latest()
    assert manifest is not None

    report = stored_bytes(store, manifest, catalog)

    on_disk = [os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files]
    assert report.objects == len(on_disk)
    assert report.total_bytes == sum(on_disk)
    kinds = (
        report.slice_bytes,
        report.checkpoint_bytes,
        report.shard_manifest_bytes,
        report.ensemble_manifest_bytes,
        report.placement_bytes,
        report.other_bytes,
    )
    assert all(k > 0 for k in kinds)  # receipts and tombstones of the erasure are "other"
    assert sum(kinds) == report.total_bytes
    assert 0 < report.referenced_bytes < report.total_bytes
    assert report.rows == manifest.rows
    assert report.bytes_per_row == pytest.approx(report.total_bytes / manifest.rows)
