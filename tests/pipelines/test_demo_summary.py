"""The demo's summary table explains a speed-up far below the ideal instead of leaving it bare (new-user review)."""

from __future__ import annotations

from pathlib import Path

from expunge.pipelines.demo import DemoOptions, DemoResult, _print_summary


def _result(cpu_speedup: float) -> DemoResult:
    return DemoResult(
        exact=True, erasure_seconds=1.0, retrain_seconds=0.5, full_retrain_seconds=1.0, speedup=2.0,
        speedup_vs_monolith=0.7, cpu_speedup_vs_monolith=cpu_speedup, ideal_speedup_vs_monolith=10.7,
        reference_seconds=1.0, train_seconds=1.0, affected_shards=[3], slices_retrained={3: [2, 3]},
        untouched_shards_unchanged=True, request_id="req-1", forgotten_subject="user-1",
        forgotten_subject_digest="ab" * 32, rows_removed=10, model_name="m", model_version="2", storage="s",
        tracking_uri="sqlite:///x.db", test_rmse_before=1.0, test_rmse_after=1.0, scan_traces_before=1,
        scan_traces_after=0, deleted_objects=4,
    )  # fmt: skip


def test_a_speed_up_far_below_the_ideal_says_why(capsys, tmp_path: Path):
    _print_summary(_result(1.0), DemoOptions(workdir=tmp_path))
    out = capsys.readouterr().out
    assert "why below the ideal" in out
    assert "affected shard (id)" in out


def test_a_speed_up_near_the_ideal_needs_no_excuse(capsys, tmp_path: Path):
    _print_summary(_result(9.0), DemoOptions(workdir=tmp_path))
    assert "why below the ideal" not in capsys.readouterr().out


def test_the_commands_it_prints_name_the_same_venv(capsys, tmp_path: Path):
    # A new user's finding: `mlflow ui` came with the venv's path and `expunge serve` bare, which
    # is not on PATH unless the venv is activated.
    import shlex
    import sys

    (tmp_path / "job.yaml").write_text("storage: {uri: s}\n")
    _print_summary(_result(9.0), DemoOptions(workdir=tmp_path))
    out = capsys.readouterr().out
    venv = Path(sys.executable).parent
    assert f"{shlex.quote(str(venv / 'expunge'))} serve --config" in out
    assert f"{shlex.quote(str(venv / 'mlflow'))} ui" in out
