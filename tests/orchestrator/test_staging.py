"""Streamed training input (issue 12): batch by batch, staged in the store, bit-identical to ``train``."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from expunge.orchestrator.catalog import STAGING_PREFIX
from expunge.orchestrator.config import ItemStatsConfig, JobConfig, StorageConfig, SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.errors import DataValidationError, ErasedSubjectsInDataError, ShardRetrainFailed
from expunge.orchestrator.training.streaming import parquet_batches, table_batches
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import RATING, SUBJECT_ID
from expunge.shards.shard import Shard
from expunge.shards.store import ObjectStore
from tests.engine import job, store_snapshot

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=40, items=25, ratings_per_user=6, seed=5))
SUBJECTS = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))


def _parquet(tmp_path, rows: pa.Table, name: str = "rows.parquet") -> str:
    path = tmp_path / name
    pq.write_table(rows, path, row_group_size=29)  # batches cut across subjects
    return str(path)


def _objects(root) -> dict[str, bytes]:
    return {k: v for k, v in store_snapshot(root).items() if k.startswith(("shards/", "placement/"))}


@pytest.mark.parametrize(
    "config",
    [
        job(shards=3, slices=4),
        job(shards=2, slices=3, placement="hash"),
        job(shards=2, slices=2, placement="row"),
        job(model=ItemStatsConfig(factors=2), shards=2, slices=3),
    ],
    ids=["balanced", "hash", "row", "item_stats"],
)
def test_streamed_training_equals_in_memory_training_bit_for_bit(tmp_path, hasher, config: JobConfig):
    in_memory = Coordinator(str(tmp_path / "a"), hasher, pool_factory=local_pool)
    expected = in_memory.train(ROWS, config, request_id="train")
    streamed = Coordinator(str(tmp_path / "b"), hasher, pool_factory=local_pool)
    got = streamed.train_stream(parquet_batches(_parquet(tmp_path, ROWS), batch_rows=37), config, request_id="train")
    # Shard manifests, slices, checkpoints and the placement object: the same keys and bytes.
    assert _objects(tmp_path / "b") == _objects(tmp_path / "a")
    assert got.manifest.model_dump(
        exclude={"train_seconds", "train_cpu_seconds", "created_at"}
    ) == expected.manifest.model_dump(exclude={"train_seconds", "train_cpu_seconds", "created_at"})
    assert not streamed.store.list_keys(STAGING_PREFIX)


def test_known_subjects_keep_their_cells_and_dropped_tombstones_match(tmp_path, hasher):
    config = job(shards=3, slices=2).model_copy(
        update={"data": job().data.model_copy(update={"erased_subjects": "drop"})}
    )
    first = ROWS.filter(pc.is_in(ROWS.column(SUBJECT_ID), value_set=pa.array(SUBJECTS[:25])))
    results = []
    for name, streamed in (("a", False), ("b", True)):
        coordinator = Coordinator(str(tmp_path / name), hasher, pool_factory=local_pool)
        coordinator.train(first, config)
        coordinator.forget([SUBJECTS[3]], request_id="gone")
        if streamed:
            result = coordinator.train_stream(table_batches(ROWS, 50), config, request_id="again")
        else:
            result = coordinator.train(ROWS, config, request_id="again")
        results.append(result)
    assert results[0].manifest.erased_rows_dropped == results[1].manifest.erased_rows_dropped > 0
    assert _objects(tmp_path / "a") == _objects(tmp_path / "b")


def test_erased_subjects_are_refused_with_the_counts_train_gives(tmp_path, hasher):
    coordinator = Coordinator(str(tmp_path / "s"), hasher, pool_factory=local_pool)
    coordinator.train(ROWS, job(shards=2, slices=2))
    coordinator.forget(SUBJECTS[:2], request_id="gone")
    with pytest.raises(ErasedSubjectsInDataError) as in_memory:
        coordinator.train(ROWS, job(shards=2, slices=2))
    with pytest.raises(ErasedSubjectsInDataError) as streamed:
        coordinator.train_stream(table_batches(ROWS, 7), job(shards=2, slices=2))
    assert str(streamed.value) == str(in_memory.value)
    assert not coordinator.store.list_keys(STAGING_PREFIX)


def test_a_bad_batch_is_refused_by_the_same_validation_naming_its_rows(tmp_path, hasher):
    bad = ROWS.set_column(
        ROWS.column_names.index(RATING), RATING, pa.array([9.0] + [3.0] * (len(ROWS) - 1), pa.float32())
    )
    shifted = pa.concat_tables([ROWS.slice(100), bad.slice(0, 100)])
    coordinator = Coordinator(str(tmp_path / "s"), hasher, pool_factory=local_pool)
    with pytest.raises(DataValidationError, match="outside the rating range") as error:
        coordinator.train_stream(table_batches(shifted, 50), job(shards=2, slices=2), source="ratings.parquet")
    # The bad row is row 140 of the input: the batch of rows 100..149, its row 40.
    assert error.value.source == "ratings.parquet (rows 100..149)"
    assert "9.0 at row 40" in str(error.value)
    assert coordinator.manifest is None
    assert not store_snapshot(tmp_path / "s")


def test_a_record_id_repeated_across_batches_is_refused(tmp_path, hasher):
    twice = pa.concat_tables([ROWS, ROWS.slice(0, 1)])  # one subject's row again, in the last batch
    coordinator = Coordinator(str(tmp_path / "s"), hasher, pool_factory=local_pool)
    with pytest.raises(DataValidationError, match="1 duplicate record_id"):
        coordinator.train_stream(table_batches(twice, 40), job(shards=2, slices=2))
    assert coordinator.manifest is None
    assert not coordinator.store.list_keys(STAGING_PREFIX)


def test_staged_rows_are_deleted_when_a_shard_fails(tmp_path, hasher, monkeypatch):
    def broken(self, key, slices, request_id=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Shard, "train_staged", broken)
    coordinator = Coordinator(str(tmp_path / "s"), hasher, pool_factory=local_pool)
    with pytest.raises(ShardRetrainFailed):
        coordinator.train_stream(table_batches(ROWS, 64), job(shards=2, slices=2))
    assert not coordinator.store.list_keys(STAGING_PREFIX)


def test_staging_left_by_a_crash_is_purged_by_the_next_commit_or_open(tmp_path, hasher):
    store = ObjectStore(str(tmp_path / "s"))
    store.put(f"{STAGING_PREFIX}crashed-run/0000.parquet", b"raw rows of a crashed run")
    coordinator = Coordinator(str(tmp_path / "s"), hasher, pool_factory=local_pool)
    coordinator.train_stream(table_batches(ROWS, 64), job(shards=2, slices=2))
    assert not store.list_keys(STAGING_PREFIX)
    store.put(f"{STAGING_PREFIX}crashed-again/0001.parquet", b"raw rows")
    Coordinator(str(tmp_path / "s"), hasher, pool_factory=local_pool)
    # Written after the commit (as a live writer's would be): left alone until the next commit.
    assert store.list_keys(STAGING_PREFIX) == [f"{STAGING_PREFIX}crashed-again/0001.parquet"]


def test_streamed_training_on_s3(s3_bucket, hasher, tmp_path):
    storage = StorageConfig(uri=f"s3://{s3_bucket}/stream")
    coordinator = Coordinator(storage, hasher, pool_factory=local_pool)
    result = coordinator.train_stream(table_batches(ROWS, 64), job(shards=2, slices=2), request_id="train")
    local = Coordinator(str(tmp_path / "local"), hasher, pool_factory=local_pool)
    assert result.manifest.placement_key == local.train(ROWS, job(shards=2, slices=2)).manifest.placement_key
    assert not coordinator.store.list_keys(STAGING_PREFIX)
    assert result.manifest.rows == len(ROWS)


def test_each_file_of_a_folder_keeps_its_own_id_types(tmp_path, hasher):
    # A text id "01001" in a later file must not become the integer 1001 of the first file.
    folder = tmp_path / "input"
    folder.mkdir()
    common = {"item_id": pa.array([1, 2], pa.int64()), "rating": pa.array([3.0, 4.0], pa.float32())}
    pq.write_table(
        pa.table({"record_id": ["a1", "a2"], "subject_id": pa.array([1001, 7]), **common}), folder / "a.parquet"
    )
    pq.write_table(
        pa.table({"record_id": ["b1", "b2"], "subject_id": ["01001", "007"], **common}), folder / "b.parquet"
    )
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    coordinator.train_stream(parquet_batches(str(folder)), job(shards=2, slices=1))
    assert len(coordinator.placement_index().cells()) == 4
    assert coordinator.forget(["01001"]).status == "erased"


def test_small_row_groups_are_joined_into_batches(tmp_path):
    path = _parquet(tmp_path, ROWS.slice(0, 50), "tiny-groups.parquet")
    pq.write_table(ROWS.slice(0, 50), path, row_group_size=1)
    assert [len(b) for b in parquet_batches(path, batch_rows=16)()] == [16, 16, 16, 2]


def test_the_catalogue_size_never_depends_on_an_erased_persons_items(tmp_path, hasher):
    config = job(shards=2, slices=2).model_copy(
        update={"data": job().data.model_copy(update={"erased_subjects": "drop"})}
    )
    loner = pa.table(
        {
            "record_id": ["loner-1"],
            "subject_id": ["loner"],
            "item_id": pa.array([999], pa.int64()),
            "rating": pa.array([5.0], pa.float32()),
        }
    )
    rows = pa.concat_tables([ROWS, loner.cast(ROWS.schema)])
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    coordinator.train(rows, config)
    coordinator.forget(["loner"])
    in_memory = coordinator.train(rows, config).manifest.model
    streamed = coordinator.train_stream(table_batches(rows, 40), config).manifest.model
    assert streamed.num_items == in_memory.num_items < 999


def test_a_source_that_changes_between_the_passes_is_refused(tmp_path, hasher):
    calls = []

    def shifting():
        calls.append(1)
        return iter(
            [ROWS] if len(calls) == 1 else [ROWS, ROWS.slice(0, 3).set_column(1, SUBJECT_ID, pa.array(["new"] * 3))]
        )

    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    with pytest.raises(DataValidationError, match="changed between the two passes"):
        coordinator.train_stream(shifting, job(shards=2, slices=2))
    assert coordinator.manifest is None


def test_local_staging_folders_of_dead_processes_are_swept(tmp_path):
    import os

    from expunge.orchestrator.training.streaming import sweep_local_staging

    dead = tmp_path / "expunge-staging-999999999-abc"
    mine = tmp_path / f"expunge-staging-{os.getpid()}-def"
    for folder in (dead, mine):
        folder.mkdir()
        (folder / "0000.parquet").write_bytes(b"raw rows")
    assert sweep_local_staging(str(tmp_path)) == [str(dead)]
    assert mine.exists()
