"""A warm item_stats shard keeps its slice tables in memory: its erasures read no slice again (issue 22)."""

from __future__ import annotations

from expunge.orchestrator.config import ItemStatsConfig, SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.evidence.exactness import constituents_equal
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from tests.engine import from_scratch, job, without

RATINGS = synthetic_ratings(SyntheticRatingsConfig(users=60, items=40, ratings_per_user=8, seed=3))
CONFIG = ItemStatsConfig(factors=3, neighbours=10)


def _same_shard_subjects(coordinator, hasher) -> list[str]:
    homes = coordinator.placement_index().home_cells()
    subjects = sorted(set(RATINGS.column(SUBJECT_ID).to_pylist()))
    shard = homes[hasher.digest(subjects[0])].shard
    return [s for s in subjects if homes[hasher.digest(s)].shard == shard][:3]


def test_a_warm_shard_erases_again_without_reading_its_slices_and_stays_exact(tmp_path, hasher, slice_reads):
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    config = job(CONFIG, shards=3, slices=4)
    coordinator.train(RATINGS, config)
    first, second, third = _same_shard_subjects(coordinator, hasher)
    coordinator.forget([first])
    assert slice_reads == []  # the shard kept the tables it trained on
    coordinator.forget([second])
    coordinator.forget([third])
    assert slice_reads == []  # the warm shard filtered the tables it kept
    reference = from_scratch(tmp_path, coordinator, without(RATINGS, [first, second, third]), config, hasher)
    assert constituents_equal(coordinator.constituent_tensors(), reference.constituent_tensors()) == {
        0: True,
        1: True,
        2: True,
    }
    # The slice objects the warm shard wrote are the bytes a training from scratch writes.
    for shard in range(3):
        ours = coordinator.catalog.shard_manifest(shard, coordinator.require_manifest().shard_versions[shard])
        theirs = reference.catalog.shard_manifest(shard, reference.require_manifest().shard_versions[shard])
        assert [s.sha256 for s in ours.slices] == [s.sha256 for s in theirs.slices]
