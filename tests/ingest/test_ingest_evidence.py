"""Evidence across ingests: tampering before an ingest is not laundered by the erasure after it."""

from __future__ import annotations

from expunge.orchestrator.config import MFConfig, SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from tests.conftest import TEST_KEY
from tests.engine import job

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=30, items=20, ratings_per_user=6, seed=8))


def test_a_file_changed_before_an_ingest_is_recorded_by_the_next_erasure(tmp_path) -> None:
    hasher = SubjectHasher(TEST_KEY)
    store = tmp_path / "store"
    coordinator = Coordinator(str(store), hasher, pool_factory=local_pool)
    subjects = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))
    coordinator.train(ROWS, job(model=MFConfig(embedding_dim=4), shards=2, slices=2))
    coordinator.forget([subjects[0]])  # a receipt binds every file of this version
    homes = coordinator.placement_index().home_cells()
    erased_next = subjects[1]
    other = 1 - homes[hasher.digest(erased_next)].shard
    manifest = coordinator.require_manifest()
    untouched = f"shards/{other:04d}/manifests/{manifest.shard_versions[other]:08d}.json"
    tampered = store / untouched
    tampered.write_bytes(tampered.read_bytes() + b" ")  # rewritten in place between two commits, by hand
    # The ingest and the erasure after it both stay on the other shard: the tampered manifest is carried.
    same_shard = next(s for s in subjects[2:] if homes[hasher.digest(s)].shard != other)
    known = ROWS.filter(ROWS.column(SUBJECT_ID).to_numpy(zero_copy_only=False) == same_shard).slice(0, 1)
    added = coordinator.ingest(known.set_column(0, "record_id", [["late-1"]]))  # an ingest binds no state
    assert added.touched_shards == [1 - other]
    receipt = coordinator.forget([erased_next])
    assert receipt.state is not None
    assert any(untouched in problem for problem in receipt.state.carried_mismatches)
