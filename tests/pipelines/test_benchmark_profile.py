"""`expunge benchmark profile`: the stage clock's accounting, the report's totals, and one tiny end-to-end run."""

from __future__ import annotations

import itertools
import json
import os
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from expunge.pipelines import benchmark_profile
from expunge.pipelines._runtime import ProcessTreeCPU, StageClock, stage, timed_by
from expunge.pipelines.benchmark_profile import (
    EXIT_STAGE,
    IMPORTS_STAGE,
    ProfileSettings,
    StageRow,
    phase_profile,
    run,
)
from expunge.pipelines.cli import app


def _ticking() -> StageClock:
    """A clock whose cluster CPU reads 1, 2, 3, ... so that exclusive accounting is exact."""
    counter = itertools.count(1)
    return StageClock(cluster_cpu=lambda: float(next(counter)))


def test_a_nested_stage_is_counted_once_in_itself():
    clock = _ticking()
    with timed_by(clock), stage("outer"):  # reads 1
        with stage("inner"):  # reads 2, then 3
            pass
        with stage("inner"):  # reads 4, then 5
            pass
    # outer reads 6: 5 in all, 2 of them inside "inner"
    by_name = {s.name: s for s in clock.stages()}
    assert by_name["inner"].cluster_cpu_s == 2.0
    assert by_name["inner"].calls == 2
    assert by_name["outer"].cluster_cpu_s == 3.0
    assert by_name["outer"].wall_s >= 0
    assert by_name["outer"].cpu_s >= 0


def test_stages_belong_to_the_phase_current_when_they_ran():
    clock = _ticking()
    with timed_by(clock):
        with stage("retrain"):
            pass
        clock.phase = "warm"
        with stage("retrain"):
            pass
    assert [(s.phase, s.name) for s in clock.stages()] == [("cold", "retrain"), ("warm", "retrain")]
    assert [s.name for s in clock.stages("warm")] == ["retrain"]


def test_stage_without_an_active_clock_does_nothing():
    clock = _ticking()
    with stage("unseen"):
        pass
    with timed_by(clock):
        pass
    with stage("after"):
        pass
    assert clock.stages() == []


def test_measured_elsewhere_counts_in_the_enclosing_stage_once():
    clock = _ticking()
    with timed_by(clock), stage("outer"):  # reads 1, then 2
        clock.add("imports", 0.0, 0.0, 10.0)
    by_name = {s.name: s for s in clock.stages()}
    assert by_name["imports"].cluster_cpu_s == 10.0
    assert by_name["outer"].cluster_cpu_s == 1.0 - 10.0  # the clock trusts what it is told


def test_an_overlapped_stage_is_shown_but_left_out_of_the_totals():
    clock = _ticking()
    worker = threading.Thread(target=clock.add_overlapped, args=("MLflow open", 2.0, 1.5))
    worker.start()
    worker.join()
    rows = [StageRow(**{k: v for k, v in vars(s).items() if k != "phase"}) for s in clock.stages()]
    rows.append(StageRow(name="retrain", wall_s=1.0, cpu_s=0.25, cluster_cpu_s=0.5, calls=1))
    profile = phase_profile(rows)
    assert [s.name for s in profile.stages] == ["MLflow open", "retrain"]
    assert profile.stages[0].overlapped
    assert (profile.wall_s, profile.cpu_s, profile.cluster_cpu_s) == (1.0, 0.25, 0.5)


def test_outside_work_is_every_counted_stage_but_retraining_and_registration():
    rows = [
        StageRow(name=name, wall_s=wall, cpu_s=0.0, cluster_cpu_s=None if name == EXIT_STAGE else 0.0, calls=1)
        for name, wall in [(IMPORTS_STAGE, 2.0), ("retrain", 3.0), ("registration", 1.0), (EXIT_STAGE, 0.5)]
    ]
    profile = phase_profile(rows)
    assert profile.wall_s == 6.5
    assert profile.outside_work_wall_s == 2.5
    assert profile.cluster_cpu_s is None  # one stage could not measure it


def test_process_tree_cpu_sees_a_child_process():
    import subprocess
    import sys

    tree = ProcessTreeCPU()
    if tree() is None:
        pytest.skip("no /proc here")
    child = subprocess.Popen([sys.executable, "-c", "import sys; sum(range(3_000_000)); sys.stdin.read()"],
                             stdin=subprocess.PIPE)  # fmt: skip
    try:
        seen = 0.0
        for _ in range(200):  # until the child has used a clock tick (bounded; no wall-clock threshold)
            seen = tree() or 0.0
            if seen > 0:
                break
            threading.Event().wait(0.05)
        assert seen > 0
    finally:
        child.communicate(b"")
    assert (tree() or 0.0) >= seen  # a process that ended keeps what it was last seen using


def test_the_profile_is_a_subjob_of_benchmark():
    result = CliRunner().invoke(app, ["benchmark", "profile", "--help"])
    assert result.exit_code == 0, result.output
    assert "--data" in result.output
    assert "--shards" in result.output


def test_settings_refuse_an_unknown_model():
    with pytest.raises(ValueError, match="model"):
        ProfileSettings(model="nope")


def test_an_unknown_model_is_one_clean_error_line():
    """Issue 22: --model ease printed a pydantic validation box."""
    result = CliRunner().invoke(app, ["benchmark", "profile", "--model", "ease"])
    assert result.exit_code == 2
    assert "error: --model 'ease': choose mf or item_stats" in result.output
    assert "validation error" not in result.output
    assert "Traceback" not in result.output


def test_the_report_shows_only_the_settings_the_run_used():
    """Issue 22: with --data the generated-data sizes showed as if used; with item_stats the MF epochs."""
    generated_mf = ProfileSettings().used()
    assert {"users", "items", "ratings_per_user", "epochs", "batch_size"} <= set(generated_mf)
    movielens_mf = ProfileSettings(data=Path("u.data")).used()
    assert not {"users", "items", "ratings_per_user"} & set(movielens_mf)
    assert {"epochs", "batch_size", "shards", "slices", "seed"} <= set(movielens_mf)
    assert movielens_mf["data"] == "u.data"
    movielens_stats = ProfileSettings(data=Path("u.data"), model="item_stats").used()
    assert not {"users", "items", "ratings_per_user", "epochs", "batch_size"} & set(movielens_stats)
    assert {"users", "items"} <= set(ProfileSettings(model="item_stats").used())


def _fake_processes(
    command: list[str], env: dict[str, str], log_file: Path, what: str, pass_fds: tuple[int, ...] = ()
) -> None:
    """``_run_logged`` without processes: training does nothing; the measured process reports made-up stages."""
    if "--child" not in command:
        return
    spec = json.loads(command[command.index("--child") + 1])
    assert pass_fds == (spec["progress_fd"],)  # the measured process inherits the progress pipe
    os.write(spec["progress_fd"], b"cold erasure done: erased\nwarm erasure: the same process\nwarm erasure done\n")
    stage = {"cpu_s": 0.1, "cluster_cpu_s": 0.1, "calls": 1, "overlapped": False}
    stages = [{"phase": p, "name": "retrain", "wall_s": 1.0, **stage} for p in ("cold", "warm")]
    Path(spec["report"]).write_text(json.dumps({"stages": stages, "receipts": {}}))


def test_each_phase_says_so_on_stderr_and_the_report_keeps_the_used_settings(tmp_path, monkeypatch, capsys):
    """Issue 22: a profile ran a minute with nothing on stderr."""
    monkeypatch.setattr(benchmark_profile, "_run_logged", _fake_processes)
    settings = ProfileSettings(model="item_stats", users=8, items=6, ratings_per_user=3)

    report = run(settings, tmp_path / "profile")

    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith("training the store: item_stats, S=4 R=4, on generated ratings")
    assert lines[1].startswith("trained on 24 rows (")
    assert lines[2].startswith("cold erasure: a fresh process")
    assert lines[3:] == ["cold erasure done: erased", "warm erasure: the same process", "warm erasure done"]
    assert "epochs" not in report.settings
    assert report.settings["users"] == 8


@pytest.mark.slow  # trains a store and starts Ray in a fresh process: 30-90 s on a busy 2-core machine
def test_a_tiny_profile_times_every_stage_of_a_cold_and_a_warm_erasure(tmp_path):
    settings = ProfileSettings(shards=2, slices=2, epochs=1, users=20, items=10, ratings_per_user=5)
    said: list[str] = []

    report = run(settings, tmp_path / "profile", say=said.append)

    assert [line.split(":")[0] for line in said] == [
        "training the store",
        f"trained on {report.rows} rows ({report.train_wall_s:.1f} s)",
        "cold erasure",
        "cold erasure done",
        "warm erasure",
        "warm erasure done",
        "stopped Ray; the measured process exits",
    ]

    cold = {s.name for s in report.cold.stages}
    assert {IMPORTS_STAGE, "Ray start", "actor spawn", "retrain", "registration", "Ray shutdown", EXIT_STAGE} <= cold
    assert {"retrain", "registration"} <= {s.name for s in report.warm.stages}
    assert {r["status"] for r in report.receipts.values()} == {"erased"}
    assert report.cold.wall_s >= report.cold.outside_work_wall_s > 0
    assert [g.limit for g in report.goals] == [15.0, 5.0]


def test_a_missed_goal_is_said_on_stderr(tmp_path, monkeypatch):
    """Issue 22 review: a profile whose cold erasure missed both goals exited 0 and said nothing."""

    def slow_ray(command: list[str], env: dict[str, str], log_file: Path, what: str, pass_fds=()) -> None:
        if "--child" not in command:
            return
        spec = json.loads(command[command.index("--child") + 1])
        stage = {"cpu_s": 0.1, "cluster_cpu_s": 0.1, "calls": 1, "overlapped": False}
        stages = [{"phase": "cold", "name": "Ray start", "wall_s": 20.0, **stage}]
        stages += [{"phase": p, "name": "retrain", "wall_s": 1.0, **stage} for p in ("cold", "warm")]
        Path(spec["report"]).write_text(json.dumps({"stages": stages, "receipts": {}}))

    monkeypatch.setattr(benchmark_profile, "_run_logged", slow_ray)
    result = CliRunner().invoke(
        app, ["benchmark", "profile", "--workdir", str(tmp_path / "w"), "--output", str(tmp_path / "out.json")]
    )
    assert result.exit_code == 0, result.output
    assert "goal missed: cold CLI erasure wall seconds outside retraining and registration" in result.output
