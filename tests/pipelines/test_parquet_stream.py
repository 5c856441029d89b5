"""``data.source: parquet`` is streamed: mapped and split batch by batch, trained bit for bit as loaded whole."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from expunge.orchestrator.config import DataConfig, MLPConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
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
        elif key.startswith(("shards/", "placement/")):
            assert streamed[key] == data, key
