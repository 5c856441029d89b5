from __future__ import annotations

import pytest

from orchestrator.config import MFConfig, TrainingConfig
from pipelines.benchmark import BenchmarkRow, run, with_monolith_baseline


def _row(shards: int, slices: int, train: float, phase: float, erasure: float, retrain: list[float]) -> BenchmarkRow:
    return BenchmarkRow(
        shards=shards,
        slices=slices,
        batch_size=512,
        train_seconds=train,
        train_phase_seconds=phase,
        test_rmse=1.0,
        erasure_seconds_median=erasure,
        erasure_seconds=[erasure],
        retrain_seconds=retrain,
        first_affected_slices=[0],
        speedup=1.0,
        ideal_speedup=1.0,
    )


def test_speedups_against_the_monolith_divide_its_times_by_the_erasure_times():
    monolith = _row(1, 1, train=30.0, phase=20.0, erasure=12.0, retrain=[10.0])
    sisa = _row(4, 4, train=40.0, phase=25.0, erasure=6.0, retrain=[2.0, 4.0, 9.0])
    unmeasured = _row(8, 8, train=40.0, phase=25.0, erasure=5.0, retrain=[])
    base, measured, missing = with_monolith_baseline([monolith, sisa, unmeasured], monolith)
    assert base.speedup_vs_monolith == pytest.approx(1.0)
    assert measured.speedup_vs_monolith == pytest.approx(10.0 / 4.0)  # monolith's full retrain over median retraining
    assert measured.end_to_end_vs_monolith == pytest.approx(12.0 / 6.0)  # whole erasure over whole erasure
    assert missing.speedup_vs_monolith == 0.0  # no retraining time: no figure rather than a division by zero
    no_erasure = _row(1, 1, train=30.0, phase=20.0, erasure=0.0, retrain=[])
    (fallback,) = with_monolith_baseline([sisa], no_erasure)
    assert fallback.speedup_vs_monolith == pytest.approx(20.0 / 4.0)  # then its first training phase


@pytest.mark.integration
def test_benchmark_measures_every_configuration_on_grouplens_layout(tmp_path, ray_cluster, s3_bucket):
    lines = [f"{u}\t{i}\t{1 + (u * i) % 5}\t{880000000 + u * 100 + i}" for u in range(1, 31) for i in range(1, 13)]
    data = tmp_path / "u.data"
    data.write_text("\n".join(lines) + "\n")
    training = TrainingConfig(model=MFConfig(embedding_dim=4), epochs=2, batch_size=64, cpus_per_shard=0.25)
    results = run(data, [(1, 1), (2, 2)], training, erasures=2, s3_uri=f"s3://{s3_bucket}/bench", s3_grid=[(2, 2)])
    assert [(r.storage, r.shards, r.slices) for r in results] == [("local", 1, 1), ("local", 2, 2), ("s3", 2, 2)]
    assert len(results[0].erasure_seconds) == 1  # the monolith's erasure is a full retrain: timed once
    for row in results:
        assert row.batch_size == 64  # parity: every shard uses the monolith's batch
        assert len(row.erasure_seconds) == (1 if row.shards == 1 else 2)
        assert row.test_rmse > 0
        assert row.speedup > 0
        assert row.speedup_vs_monolith > 0
        assert row.ideal_speedup_vs_monolith >= 1.0
        assert row.storage_report is not None
        assert row.storage_report.bytes_per_row > 0
