"""``data.source: parquet`` is streamed: mapped and split batch by batch, trained bit for bit as loaded whole."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from expunge.orchestrator.config import DataConfig, MLPConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.errors import DataValidationError
from expunge.pipelines.datasets import load_parquet, parquet_stream, split_rows
from tests.engine import job, store_snapshot


def _customers(path, n: int = 120) -> None:
    rng = np.random.default_rng(0)
    pq.write_table(
        pa.table(
            {
                "rid": [f"r{i:04d}" for i in range(n)],
                "cid": [f"c{i % 30}" for i in range(n)],
                "age": rng.integers(18, 80, n),
                "spend": rng.normal(0, 1, n),
                "label": rng.integers(0, 2, n),
            }
        ),
        path,
        row_group_size=25,
    )


def test_streamed_tabular_parquet_trains_as_the_loaded_file(tmp_path, hasher):
    path = tmp_path / "customers.parquet"
    _customers(path)
    config = DataConfig(
        source="parquet",
        path=str(path),
        columns={"record_id": "rid", "subject_id": "cid"},
        feature_columns=("age", "spend"),
        test_fraction=0.25,
    )
    batches, held_out = parquet_stream(config, batch_rows=25)
    train, test = split_rows(
        load_parquet(path, config.columns, config.feature_columns, "classification"), 0.25, config.split_seed
    )
    assert held_out.column("record_id").to_pylist() == test.column("record_id").to_pylist()
    assert sum(len(b) for b in batches()) == len(train)

    tabular = job(model=MLPConfig(num_features=2), shards=2, slices=2)
    Coordinator(str(tmp_path / "a"), hasher, pool_factory=local_pool).train(train, tabular)
    Coordinator(str(tmp_path / "b"), hasher, pool_factory=local_pool).train_stream(batches, tabular)

    streamed, loaded = store_snapshot(tmp_path / "b"), store_snapshot(tmp_path / "a")
    # Manifests, checkpoints and placement: the same bytes. Slices: the same keys and rows (the
    # Parquet encoder may lay out a features column read back from staging differently).
    assert {k for k in streamed if k.startswith("shards/")} == {k for k in loaded if k.startswith("shards/")}
    for key, data in loaded.items():
        if "/slices/" in key:
            assert pq.read_table(pa.BufferReader(streamed[key])).equals(pq.read_table(pa.BufferReader(data)))
        elif "/manifests/" in key:
            # The same manifest but the slices' file hashes (their Parquet bytes may differ, as above).
            assert _without_file_hashes(streamed[key]) == _without_file_hashes(data), key
        elif key.startswith(("shards/", "placement/")):
            assert streamed[key] == data, key


def _without_file_hashes(manifest: bytes) -> dict:
    document = json.loads(manifest)
    for entry in document["slices"]:
        entry.pop("sha256", None)
    return document


def _ratings(first: int, last: int) -> dict[str, list]:
    rows = range(first, last)
    return {
        "record_id": [f"r{i:04d}" for i in rows],
        "subject_id": [f"u{i % 17}" for i in rows],
        "item_id": [i % 23 for i in rows],
        "rating": [float(1 + i % 5) for i in rows],
    }


def test_a_folder_is_read_by_column_name_whatever_each_file_orders_or_adds(tmp_path, hasher):
    # Issue 18: files that put the columns in another order, or add columns, made `train` exit 5.
    folder = tmp_path / "ratings"
    folder.mkdir()
    first, second = _ratings(0, 120), _ratings(120, 240)
    pq.write_table(pa.table(first), folder / "part-0.parquet")
    pq.write_table(
        pa.table(
            {
                "note": ["free text"] * 120,  # not a canonical column: ignored
                "rating": pa.array(second["rating"], pa.float32()),  # float32 here, float64 in part-0
                "item_id": pa.array(second["item_id"], pa.int32()),  # int32 here, int64 in part-0
                "subject_id": second["subject_id"],
                "record_id": second["record_id"],
            }
        ),
        folder / "part-1.parquet",
    )
    whole = pa.concat_tables([pa.table(first), pa.table(_ratings(120, 240))])
    config = DataConfig(source="parquet", path=str(folder), test_fraction=0.2)

    batches, held_out = parquet_stream(config, batch_rows=50)

    train, test = split_rows(whole, 0.2, config.split_seed)
    assert held_out.column_names == ["record_id", "subject_id", "item_id", "rating"]
    assert held_out.column("record_id").to_pylist() == test.column("record_id").to_pylist()
    streamed = Coordinator(str(tmp_path / "streamed"), hasher, pool_factory=local_pool)
    streamed.train_stream(batches, job(shards=2, slices=2))
    loaded = Coordinator(str(tmp_path / "loaded"), hasher, pool_factory=local_pool)
    loaded.train(train, job(shards=2, slices=2))
    assert streamed.manifest is not None
    assert streamed.manifest.rows == len(train)
    a, b = store_snapshot(tmp_path / "streamed"), store_snapshot(tmp_path / "loaded")
    assert {k: v for k, v in a.items() if k.startswith(("shards/", "placement/")) and "/slices/" not in k} == {
        k: v for k, v in b.items() if k.startswith(("shards/", "placement/")) and "/slices/" not in k
    }


def test_columns_missing_from_any_file_of_a_folder_are_listed_in_one_error(tmp_path):
    folder = tmp_path / "ratings"
    folder.mkdir()
    pq.write_table(pa.table(_ratings(0, 10)), folder / "part-0.parquet")
    no_rating = {k: v for k, v in _ratings(10, 20).items() if k != "rating"}
    pq.write_table(pa.table(no_rating), folder / "part-1.parquet")
    no_item = {k: v for k, v in _ratings(20, 30).items() if k != "item_id"}
    pq.write_table(pa.table({"extra": [1] * 10, **no_item}), folder / "part-2.parquet")

    with pytest.raises(DataValidationError) as caught:
        parquet_stream(DataConfig(source="parquet", path=str(folder), test_fraction=0.2))

    problems = caught.value.problems
    assert len(problems) == 2
    assert "part-1.parquet lacks column(s) ['rating']" in problems[0]
    assert "part-2.parquet lacks column(s) ['item_id']" in problems[1]
