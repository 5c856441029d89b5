"""Smoke test of the scale benchmark recipe (10^3 rows, S=2): data in chunks, one measured point, checks, charts."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from pipelines.benchmark_scale import ScaleRow, _charts, checks, extrapolate, measure, synthetic_parquet


def test_synthetic_data_is_written_in_chunks_with_the_subjects_asked_for(tmp_path):
    path = synthetic_parquet(tmp_path / "r.parquet", 1000, rows_per_subject=10, items=50, chunk_rows=300)
    file = pq.ParquetFile(path)
    assert file.metadata.num_rows == 1000
    assert file.metadata.num_row_groups == 4  # 300+300+300+100
    table = file.read()
    assert table.column("subject_id").unique().to_pylist() == [f"s{i:09d}" for i in range(100)]
    assert len(table.column("record_id").unique()) == 1000
    assert synthetic_parquet(path, 1000) == path  # a complete file is reused, not rewritten


def test_one_point_measures_training_erasure_memory_and_storage(tmp_path, ray_cluster):
    data = synthetic_parquet(tmp_path / "r.parquet", 1000, rows_per_subject=10, items=50)
    figures = measure(data, tmp_path / "store", 2, 2, "mf", 1, 256, erasures=1, batch=3, rows_per_subject=10)
    row = ScaleRow(shards=2, slices=2, model="mf", monolith_seconds=None, **figures)
    assert (row.rows, row.subjects, row.batch_subjects) == (1000, 100, 3)
    assert 1 <= row.batch_shards_touched <= 2
    assert row.actor_peak_rss_bytes > 0
    assert row.driver_peak_rss_bytes > 0
    assert row.stored_bytes_per_row == pytest.approx(row.stored_bytes / (1000 - 4 * 10))  # 4 subjects erased
    assert not (tmp_path / "store").exists()  # the benchmark leaves no store behind

    guess = extrapolate([row], 10_000, 2, rows_per_subject=10)
    assert guess is not None
    assert guess.extrapolated
    assert guess.subjects == 1000
    assert guess.erasure_seconds == pytest.approx(10 * row.erasure_seconds)
    assert guess.actor_peak_rss_bytes == row.actor_peak_rss_bytes  # one size: no growth to extrapolate
    assert checks([row]) == {
        "erasure_follows_rows_per_shard": None,
        "batch_within_1.1x_full_retrain": row.batch_erasure_seconds <= 1.1 * row.full_retrain_seconds,
        "driver_memory_flat": None,
    }
    charts = _charts([row, guess], tmp_path)
    assert [p.rsplit("/", 1)[1] for p in charts] == ["erasure_time_vs_rows.png", "memory_vs_rows.png"]
    assert all((tmp_path / p.rsplit("/", 1)[1]).read_bytes().startswith(b"\x89PNG") for p in charts)


def test_checks_read_the_issue_thresholds():
    def point(rows: int, shards: int, erasure: float, batch: float, driver: int) -> ScaleRow:
        return ScaleRow(
            rows=rows, subjects=rows // 100, shards=shards, slices=8, model="mf", train_seconds=1.0,
            full_retrain_seconds=10.0, erasure_seconds=erasure, erasure_total_seconds=erasure, batch_subjects=100,
            batch_shards_touched=shards, batch_erasure_seconds=batch, monolith_seconds=None,
            driver_peak_rss_bytes=driver, actor_peak_rss_bytes=1, stored_bytes=1, stored_bytes_per_row=1.0,
        )  # fmt: skip

    good = [point(10**5, 8, 2.0, 10.5, 400), point(10**5, 32, 0.5, 9.0, 410)]
    assert checks(good) == {
        "erasure_follows_rows_per_shard": True,
        "batch_within_1.1x_full_retrain": True,
        "driver_memory_flat": None,
    }
    bad = [*good, point(10**6, 8, 1.0, 11.5, 900), point(10**6, 32, 3.0, 10.0, 400)]
    assert checks(bad) == {
        "erasure_follows_rows_per_shard": False,
        "batch_within_1.1x_full_retrain": False,
        "driver_memory_flat": False,
    }
