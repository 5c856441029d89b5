"""An MF shard keeps the slice tables it trained on: its erasures read no slice, and write what a read would give."""

from __future__ import annotations

import pytest

from expunge.orchestrator.config import MFConfig, SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.evidence.exactness import constituents_equal
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards import shard as shard_module
from expunge.shards.rows import SUBJECT_ID
from tests.engine import from_scratch, job, without

RATINGS = synthetic_ratings(SyntheticRatingsConfig(users=40, items=30, ratings_per_user=6, seed=5))
CONFIG = MFConfig(embedding_dim=4)


@pytest.mark.parametrize("cache_rows", [1_000_000, 0])
def test_an_mf_shard_erases_from_the_tables_it_kept_and_stays_exact(
    tmp_path, hasher, slice_reads, monkeypatch, cache_rows
):
    monkeypatch.setattr(shard_module, "_SLICE_CACHE_ROWS", cache_rows)
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    config = job(CONFIG, shards=2, slices=3)
    coordinator.train(RATINGS, config)
    subjects = sorted(set(RATINGS.column(SUBJECT_ID).to_pylist()))[:3]
    for subject in subjects:
        coordinator.forget([subject])
    assert (slice_reads == []) == (cache_rows > 0)  # above the bound, every erasure reads its slices again
    reference = from_scratch(tmp_path, coordinator, without(RATINGS, subjects), config, hasher)
    assert constituents_equal(coordinator.constituent_tensors(), reference.constituent_tensors()) == {0: True, 1: True}
    for shard in range(2):  # the slice objects rewritten from kept tables are the bytes a training from scratch writes
        ours = coordinator.catalog.shard_manifest(shard, coordinator.require_manifest().shard_versions[shard])
        theirs = reference.catalog.shard_manifest(shard, reference.require_manifest().shard_versions[shard])
        assert [s.sha256 for s in ours.slices] == [s.sha256 for s in theirs.slices]
