from __future__ import annotations

import pytest

from orchestrator.config import MFConfig, TrainingConfig
from pipelines.benchmark import ideal_speedup, run


@pytest.mark.parametrize(
    ("shards", "slices", "first", "expected"),
    [
        (1, 1, [0], 1.0),  # one shard, one slice: an erasure is a full retrain
        (4, 1, [0], 4.0),  # only one of four shards retrains
        (1, 4, [3], 2.5),  # last slice: redo step 4 (work 4) of 1+2+3+4
        (1, 4, [0], 1.0),
        (2, 2, [0, 1], 2 * 3 / 2.5),
    ],
)
def test_ideal_speedup_follows_the_slice_arithmetic(shards, slices, first, expected):
    assert ideal_speedup(shards, slices, first) == pytest.approx(expected)


@pytest.mark.integration
def test_benchmark_measures_every_configuration_on_grouplens_layout(tmp_path, ray_cluster, s3_bucket):
    lines = [f"{u}\t{i}\t{1 + (u * i) % 5}\t{880000000 + u * 100 + i}" for u in range(1, 31) for i in range(1, 13)]
    data = tmp_path / "u.data"
    data.write_text("\n".join(lines) + "\n")
    training = TrainingConfig(model=MFConfig(embedding_dim=4), epochs=2, batch_size=64, cpus_per_shard=0.25)
    results = run(data, [(1, 1), (2, 2)], training, erasures=2, s3_uri=f"s3://{s3_bucket}/bench", s3_grid=[(2, 2)])
    assert [(r.storage, r.shards, r.slices) for r in results] == [("local", 1, 1), ("local", 2, 2), ("s3", 2, 2)]
    for row in results:
        assert len(row.erasure_seconds) == 2
        assert row.test_rmse > 0
        assert row.speedup > 0
