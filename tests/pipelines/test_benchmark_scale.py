"""Scale benchmark recipe: chunked data, one measured point (10^3 rows, S=2), checks, extrapolation, JSON, charts, CLI."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from expunge.pipelines.benchmark_scale import (
    NEEDS_TWO_SIZES,
    ScaleRow,
    ScaleSettings,
    _charts,
    _figure,
    _ints,
    checks,
    extrapolate,
    main,
    measure,
    report,
    shard_needs,
    synthetic_parquet,
)


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
    decided = checks([row])
    assert decided["erasure_follows_rows_per_shard"].passed is None
    assert decided["driver_memory_flat"].detail == NEEDS_TWO_SIZES
    assert decided["batch_within_1.1x_full_retrain"].passed == (
        row.batch_erasure_seconds <= 1.1 * row.full_retrain_seconds
    )
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
    assert {name: check.passed for name, check in checks(good).items()} == {
        "erasure_follows_rows_per_shard": True,
        "batch_within_1.1x_full_retrain": True,
        "driver_memory_flat": None,
    }
    bad = [*good, point(10**6, 8, 1.0, 11.5, 900), point(10**6, 32, 3.0, 10.0, 400)]
    assert {name: check.passed for name, check in checks(bad).items()} == {
        "erasure_follows_rows_per_shard": False,
        "batch_within_1.1x_full_retrain": False,
        "driver_memory_flat": False,
    }


def _point(rows: int, shards: int, erasure: float, actor_mib: int, monolith: float | None = 2.0) -> ScaleRow:
    return ScaleRow(
        rows=rows, subjects=rows // 100, shards=shards, slices=8, model="mf", train_seconds=40.0,
        full_retrain_seconds=12.0, erasure_seconds=erasure, erasure_total_seconds=erasure, batch_subjects=100,
        batch_shards_touched=shards, batch_erasure_seconds=6.0, monolith_seconds=monolith,
        driver_peak_rss_bytes=600 * 2**20, actor_peak_rss_bytes=actor_mib * 2**20, stored_bytes=17 * rows,
        stored_bytes_per_row=17.0,
    )  # fmt: skip


def test_one_measured_size_gives_json_without_nan_and_says_why_checks_are_undecided():
    settings = ScaleSettings(sizes=[10**5], shard_counts=[8], extrapolate_to=[10**7])
    result = report([_point(10**5, 8, 0.07, 500)], settings, cpus=2, memory_bytes=24 * 2**30, charts=[])
    json.dumps(result, allow_nan=False)  # raises on a bare NaN
    assert result["slopes"]["S=8"] == {"erasure_vs_rows": None, "detail": NEEDS_TWO_SIZES}
    assert result["checks"]["driver_memory_flat"] == {"passed": None, "detail": NEEDS_TWO_SIZES}
    assert result["checks"]["erasure_follows_rows_per_shard"]["passed"] is None
    assert "needs two or more shard counts" in result["checks"]["erasure_follows_rows_per_shard"]["detail"]
    assert [r["extrapolated"] for r in result["rows"]] == [False, True]
    assert "scaled linearly in rows per shard" in result["extrapolation"][0]
    # The monolith was measured up to 10^6 rows only: its 10^7 figure is flagged as beyond the limit.
    assert any("beyond what was run" in note for note in result["extrapolation"])


def test_extrapolation_grows_actor_memory_through_two_sizes_and_says_what_a_shard_needs():
    measured = [_point(10**5, 8, 0.07, 500), _point(10**6, 8, 0.7, 590)]
    guess = extrapolate(measured, 10**7, 8, rows_per_subject=100)
    assert guess is not None
    assert guess.actor_peak_rss_bytes == (500 + 90 * 11) * 2**20  # +90 MiB per 9e5 rows, 9.9e6 rows more
    assert guess.erasure_seconds == pytest.approx(7.0)  # linear in rows per shard from 10^6
    needs = shard_needs(guess, cpus=2, memory_bytes=24 * 2**30)
    assert needs.rows_per_shard == 1_250_000
    assert needs.shard_train_seconds == pytest.approx(120.0 * 2 / 8)  # phase x CPUs / S
    assert needs.all_actors_and_driver_bytes == 8 * guess.actor_peak_rss_bytes + 600 * 2**20
    assert needs.fits_memory_here
    assert "S=8 at 1e+07 rows" in needs.summary
    assert "1.46 GiB" in needs.summary
    assert not shard_needs(guess, cpus=2, memory_bytes=8 * 2**30).fits_memory_here
    assert "memory bounds it" in shard_needs(guess, cpus=2, memory_bytes=8 * 2**30).summary


def test_list_options_are_repeatable_and_take_comma_lists():
    assert _ints(["8,32"], "--shards") == _ints(["8", "32"], "--shards") == [8, 32]
    assert _ints(["1e7"], "--sizes") == [10_000_000]
    with pytest.raises(typer.BadParameter, match="--shards 'x'"):
        _ints(["8,x"], "--shards")


def test_help_names_output_and_the_list_convention():
    app = typer.Typer()
    app.command()(main)
    text = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    assert "--output" in text
    assert "--out " not in text
    assert "repeatable" in text
    assert "comma" in text


def test_charts_draw_measured_points_filled_and_extrapolated_ones_hollow():
    measured = [_point(10**5, 8, 0.07, 500), _point(10**6, 8, 0.7, 590)]
    guess = extrapolate(measured, 10**7, 8, rows_per_subject=100)
    assert guess is not None
    for name in ("erasure_time_vs_rows.png", "memory_vs_rows.png"):
        axes = _figure([*measured, guess], name).axes[0]
        assert axes.get_title()
        marked = [line for line in axes.get_lines() if line.get_marker() == "o"]
        hollow = [list(line.get_xdata()) for line in marked if line.get_markerfacecolor() == "none"]
        filled = [list(line.get_xdata()) for line in marked if line.get_markerfacecolor() != "none"]
        assert hollow == [[10**7], [10**7]]  # one series per field, S=8 only
        assert filled == [[10**5, 10**6], [10**5, 10**6]]
    memory = _figure([*measured, guess], "memory_vs_rows.png").axes[0]
    assert memory.get_yscale() == "linear"
    assert memory.get_ylim()[0] == 0
    assert memory.get_ylim()[1] >= guess.actor_peak_rss_bytes / 2**20
