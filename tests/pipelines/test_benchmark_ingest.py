"""`expunge benchmark ingest`: the time split, the schedules, the goals, and one short run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer

from expunge.orchestrator.config import SyntheticRatingsConfig
from expunge.orchestrator.errors import DataValidationError
from expunge.pipelines.benchmark_ingest import (
    BatchRow,
    IngestBenchmarkSettings,
    batch_windows,
    goals,
    markdown,
    movielens_timestamps,
    per_model,
    run,
    scheduled,
    timed_synthetic_ratings,
)
from expunge.pipelines.datasets import load_movielens
from expunge.shards.rows import SUBJECT_ID

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("batches", "every", "expected"),
    [
        (30, 0, {0, 14, 29}),
        (30, 10, {0, 9, 19, 29}),
        (5, 1, {0, 1, 2, 3, 4}),
        (1, 0, {0}),
        (2, 0, {0, 1}),
        (4, 3, {0, 2, 3}),
        (0, 1, set()),
    ],
)
def test_scheduled_batches_always_include_the_first_and_the_last(batches, every, expected):
    assert scheduled(batches, every) == expected


def test_row_windows_split_the_rows_after_the_cut_in_time_order_into_equal_runs():
    stamps = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 6.0, 4.0, 10.0])
    train, parts = batch_windows(stamps, 0.7, 2, "rows")
    assert sorted(stamps[train]) == [1, 2, 3, 4, 5, 6, 7]
    assert [list(stamps[p]) for p in parts] == [[8.0, 9.0], [10.0]]


def test_time_windows_are_equal_spans_and_empty_ones_are_dropped():
    stamps = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 100.0])
    train, parts = batch_windows(stamps, 0.5, 4, "time")  # cut after t=3: windows [3, 27.25], ..., (75.75, 100]
    assert list(stamps[train]) == [0.0, 1.0, 2.0, 3.0]
    assert [list(stamps[p]) for p in parts] == [[10.0, 11.0], [100.0]]


def test_ties_in_time_keep_the_callers_order():
    stamps = np.array([1.0, 1.0, 1.0, 1.0])
    train, parts = batch_windows(stamps, 0.5, 2, "rows")
    assert list(train) == [0, 1]
    assert [list(p) for p in parts] == [[2], [3]]


def test_generated_ratings_have_one_timestamp_per_row_after_each_users_arrival():
    rows, stamps = timed_synthetic_ratings(SyntheticRatingsConfig(users=20, items=10, ratings_per_user=4))
    assert len(stamps) == len(rows) == 80
    users = rows.column(SUBJECT_ID).to_pylist()
    for user in set(users):
        mine = stamps[[n for n, u in enumerate(users) if u == user]]
        assert list(mine) == sorted(mine)  # a user's ratings follow one another
    assert len(set(stamps.tolist())) > 40  # users arrive at different times


def test_movielens_timestamps_come_back_from_the_record_ids_and_a_file_without_them_is_refused(tmp_path):
    timed = tmp_path / "u.data"
    timed.write_text("1\t10\t4\t881250949\n2\t20\t3\t881250950\n")
    assert movielens_timestamps(load_movielens(timed), str(timed)).tolist() == [881250949.0, 881250950.0]
    untimed = tmp_path / "ratings.inter"
    untimed.write_text("user_id:token\titem_id:token\trating:float\n1\t10\t4\n2\t20\t3\n")
    with pytest.raises(DataValidationError, match="no timestamp"):
        movielens_timestamps(load_movielens(untimed), str(untimed))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], {"item_stats": 1, "mf": 0}),
        (["3"], {"item_stats": 3, "mf": 3}),
        (["mf=5"], {"item_stats": 1, "mf": 5}),
        (["item_stats=2,mf=4"], {"item_stats": 2, "mf": 4}),
        (["2", "mf=0"], {"item_stats": 2, "mf": 0}),
    ],
)
def test_per_model_options(values, expected):
    assert per_model(values, "--full-every", {"item_stats": 1, "mf": 0}) == expected


@pytest.mark.parametrize("value", ["als=2", "mf=x", "-1", "mf="])
def test_per_model_options_refuse_unknown_models_and_non_numbers(value):
    with pytest.raises(typer.BadParameter, match="MODEL=N"):
        per_model([value], "--full-every", {})


@pytest.mark.parametrize(
    ("model", "ratio", "worst", "erasure", "holds"),
    [
        ("mf", 0.05, 0.2, 1.2, [True, True]),
        ("mf", 0.2, 0.3, 1.6, [False, False]),
        ("item_stats", 0.02, 0.02, 1.5, [True, True]),
        ("item_stats", 0.021, 0.03, 0.5, [False, True]),
        ("mf", None, None, None, [None, None]),
    ],
)
def test_goals_are_reported_as_ratios_with_whether_each_holds(model, ratio, worst, erasure, holds):
    found = goals({"cpu_ratio_median": ratio, "cpu_ratio_max": worst, "erasure_after_over_before": erasure}, model)
    assert [g["holds"] for g in found] == holds
    assert [g["measured"] for g in found] == [ratio, erasure]
    assert found[0]["target"] == {"mf": 0.1, "item_stats": 0.02}[model]
    assert found[1]["target"] == 1.5


def test_a_short_run_reports_every_batch_exact_and_consistent(tmp_path):
    settings = IngestBenchmarkSettings(
        synthetic=SyntheticRatingsConfig(users=60, items=25, ratings_per_user=8, seed=3),
        batches=3,
        shards=2,
        slices=2,
        epochs=2,
        batch_size=64,
        erasures_per_batch=2,
        erasure_samples=2,
        full_every={"item_stats": 1, "mf": 0},
        check_every={"item_stats": 1, "mf": 1},
    )
    result = json.loads(json.dumps(run(settings, in_process=True), allow_nan=False))
    assert list(result["models"]) == ["item_stats", "mf"]
    assert result["split"]["train_rows"] + sum(result["split"]["batch_rows"]) == 60 * 8
    for family, measured in result["models"].items():
        rows = measured["batches"]
        assert [r["batch"] for r in rows] == [1, 2, 3]
        BatchRow.model_validate(rows[0])
        assert all(r["exact"] is True for r in rows), [r["first_difference"] for r in rows]
        assert all(r["stored_rows"] == r["manifest_rows"] for r in rows)
        assert all(len(r["erasure_retrain_cpu_seconds"]) == 2 for r in rows)
        assert sum(r["rows_added"] + r["rows_refused_erased"] for r in rows) == sum(result["split"]["batch_rows"])
        assert all(r["ingest_retrain_cpu_seconds"] > 0 and r["ingest_driver_cpu_seconds"] >= 0 for r in rows)
        full = [r["batch"] for r in rows if r["full_retrain_cpu_seconds"] is not None]
        assert full == [1, 2, 3]  # item_stats: every batch; mf (0): first, middle and last
        assert all(r["cpu_ratio"] > 0 for r in rows)
        summary = measured["summary"]
        assert summary["exact"] is True
        assert summary["batches_checked"] == 3
        assert summary["rows_consistent"] is True
        assert len(measured["erasure_before"]["retrain_cpu_seconds"]) == 2
        assert [g["target"] for g in measured["goals"]] == [{"mf": 0.1, "item_stats": 0.02}[family], 1.5]
        assert all(isinstance(g["holds"], bool) for g in measured["goals"])
    table = markdown(result)
    assert table.count("\n| item_stats | ") == 1 + 3
    assert table.count("\n| mf | ") == 1 + 3


def _expunge(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "expunge.pipelines.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_command_prints_one_json_object_and_writes_the_table_and_the_chart(tmp_path):
    ratings = tmp_path / "u.data"
    lines = [f"{u}\t{i}\t{1 + (u * i) % 5}\t{880000000 + u * 1000 + i}" for u in range(1, 31) for i in range(1, 16)]
    ratings.write_text("\n".join(line for n, line in enumerate(lines) if n % 4) + "\n")
    out = tmp_path / "out"
    result = _expunge(
        "benchmark", "ingest", "--data", str(ratings), "--batches", "2", "--shards", "2", "--slices", "2",
        "--models", "item_stats", "--erasure-samples", "1", "--local", "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    assert printed["models"]["item_stats"]["summary"]["exact"] is True
    assert printed["command"].startswith("expunge benchmark ingest --data")
    assert json.loads((out / "ingest.json").read_text())["split"] == printed["split"]
    assert (out / "ingest.md").read_text().startswith("| model |")
    if printed["chart"] is not None:
        assert (out / "ingest.png").read_bytes()[:4] == b"\x89PNG"


def test_a_missing_data_file_is_bad_input(tmp_path):
    result = _expunge("benchmark", "ingest", "--data", str(tmp_path / "nowhere.inter"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_on_ray_actors_the_shards_cpu_is_theirs_and_every_checked_batch_is_exact():
    settings = IngestBenchmarkSettings(
        synthetic=SyntheticRatingsConfig(users=40, items=20, ratings_per_user=6, seed=4),
        batches=2,
        shards=2,
        slices=2,
        epochs=2,
        batch_size=64,
        erasures_per_batch=1,
        erasure_samples=1,
        check_every={"item_stats": 1, "mf": 1},
    )
    result = run(settings, in_process=False)
    assert result["shards_in"] == "Ray actors"
    for measured in result["models"].values():
        assert measured["summary"]["exact"] is True
        assert measured["summary"]["rows_consistent"] is True
        assert all(r["ingest_retrain_cpu_seconds"] > 0 for r in measured["batches"])
        assert all(r["full_retrain_cpu_seconds"] > 0 for r in measured["batches"])
