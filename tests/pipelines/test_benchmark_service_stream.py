"""`expunge benchmark service --rate R --duration T`: the paced stream's pure parts and its options."""

from __future__ import annotations

import io
import itertools
import json

import pytest
from click.testing import CliRunner
from rich.console import Console

from expunge.orchestrator.config import TrainingConfig
from expunge.pipelines.benchmark_service import Percentiles, percentiles
from expunge.pipelines.benchmark_stream import (
    StreamResult,
    StreamSettings,
    erased_ready_to_serve,
    even_spread,
    solve_ratio,
    stream_table,
)
from expunge.pipelines.cli import app


@pytest.mark.parametrize(("total", "real"), [(0, 0), (1, 1), (10, 3), (1200, 470), (7, 7), (5, 9), (12, 0)])
def test_real_erasures_are_spread_evenly_and_counted_exactly(total, real):
    spread = even_spread(total, real)
    assert len(spread) == total
    assert sum(spread) == min(real, total)
    if 0 < real < total:
        gaps = [i for i, r in enumerate(spread) if r]
        assert max(b - a for a, b in itertools.pairwise(gaps)) <= -(-total // real)


def test_the_stream_options_are_on_benchmark_service():
    result = CliRunner().invoke(app, ["benchmark", "service", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--model", "--rate", "--duration", "--window-ms"):
        assert option in result.output


def test_an_unknown_model_is_refused_before_anything_runs(tmp_path):
    data = tmp_path / "ratings.inter"
    data.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t3\t4\n")
    result = CliRunner().invoke(app, ["benchmark", "service", "--data", str(data), "--model", "svd", "--rate", "1"])
    assert result.exit_code != 0
    assert "choose mf or item_stats" in result.output


def _result(exact_solve: Percentiles | None, ratio: float | None) -> StreamResult:
    p = percentiles([0.1, 0.2, 0.3])
    return StreamResult(
        model="mf" if exact_solve is None else "item_stats",
        rows=100,
        subjects=10,
        requests=50,
        real_erasures=5,
        lost=0,
        stages={"registered": 50},
        committed=p,
        ready=p,
        ready_to_serve=p,
        ready_to_serve_erased=p,
        registered=p,
        throughput_per_s=5.0,
        exact_solve=exact_solve,
        ready_to_serve_over_exact_solve=ratio,
        submit_lateness_max_s=0.0,
        batches=3,
        shard_retrains=4,
        registrations=3,
    )


def _rendered(result: StreamResult) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(stream_table(result, StreamSettings(model=result.model, rate=5, duration=10), TrainingConfig()))
    return console.export_text()


def test_a_model_without_an_exact_solve_shows_n_a_not_zero():
    """Issue 22: mf printed "exact solve alone ... 0.000" and a ratio of 0.00x (JSON 0.0)."""
    served = percentiles([0.2, 0.4])
    assert solve_ratio(served, [0.0, 0.0, 0.0]) == (None, None)  # what the service reports for mf
    assert solve_ratio(served, []) == (None, None)
    exact, ratio = solve_ratio(served, [0.1, 0.1, 0.1])
    assert exact is not None
    assert exact.p50 == pytest.approx(0.1)
    assert ratio == pytest.approx(3.0)

    text = _rendered(_result(None, None))
    solve_line = next(line for line in text.splitlines() if "exact solve alone" in line)
    ratio_line = next(line for line in text.splitlines() if "ready_to_serve p50 (erased) / exact solve p50" in line)
    assert "n/a" in solve_line
    assert "0.000" not in solve_line
    assert "n/a" in ratio_line
    assert "0.00x" not in ratio_line
    assert (
        json.loads(json.dumps(_result(None, None).model_dump(), default=str))["ready_to_serve_over_exact_solve"] is None
    )
    assert "3.00x" in _rendered(_result(exact, ratio))


def test_the_stream_without_data_says_the_stream_needs_it():
    result = CliRunner().invoke(app, ["benchmark", "service", "--rate", "5", "--duration", "10"])
    assert result.exit_code == 2
    assert "the stream (--rate 5) needs --data FILE" in result.output


def test_a_missing_data_file_is_named_with_the_option_the_user_typed(tmp_path):
    """New-user review: the message named only ``data.path``, a config key the CLI user never wrote."""
    missing = tmp_path / "absent.inter"
    result = CliRunner().invoke(app, ["benchmark", "service", "--data", str(missing), "--rate", "5", "--duration", "1"])
    assert result.exit_code == 2
    assert "--data" in result.output
    assert "does not exist" in result.output


def test_a_data_folder_is_told_to_name_the_ratings_file_inside_it(tmp_path):
    result = CliRunner().invoke(
        app, ["benchmark", "service", "--data", str(tmp_path), "--rate", "5", "--duration", "1"]
    )
    assert result.exit_code == 2
    assert "is a folder: give the ratings file inside it" in result.output


def test_a_duration_without_a_rate_is_refused_not_ignored(tmp_path):
    """New-user review: it ran the latency and load benchmark (minutes) instead of the short stream asked for."""
    data = tmp_path / "u.data"
    data.write_text("1\t1\t5\t1\n")
    result = CliRunner().invoke(app, ["benchmark", "service", "--data", str(data), "--duration", "10"])
    assert result.exit_code == 2
    assert "add --rate, or drop --duration" in result.output


@pytest.mark.parametrize(("rate", "duration"), [("0.01", "10"), ("inf", "10"), ("5", "inf")])
def test_a_stream_of_no_request_or_of_infinitely_many_is_refused_before_anything_runs(tmp_path, rate, duration):
    """New-user review: --rate 0.01 --duration 10 failed with exit 5 after training; inf overflowed (exit 5)."""
    data = tmp_path / "u.data"
    data.write_text("1\t1\t5\t1\n")
    args = ["benchmark", "service", "--data", str(data), "--rate", rate, "--duration", duration]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "not a stream of at least one request" in result.output


def test_a_rate_with_the_http_load_is_refused_not_ignored():
    result = CliRunner().invoke(app, ["benchmark", "service", "--http", "--rate", "5"])
    assert result.exit_code == 2
    assert "drop --http or --rate" in result.output


def test_the_ratio_counts_only_requests_that_erased_someone():
    """A not_found request is ready at its commit (0 s): counted, it pulled the ratio's p50 down."""
    outcomes = [
        ("erased", 1.5),
        ("not_found", 0.0),
        ("not_found", 0.0),
        ("erased", 2.5),
        (None, None),
        ("erased", None),
    ]
    assert erased_ready_to_serve(outcomes) == [1.5, 2.5]
    every = percentiles([s for _, s in outcomes if s is not None])
    _, over_all = solve_ratio(every, [1.0])
    _, over_erased = solve_ratio(percentiles(erased_ready_to_serve(outcomes)), [1.0])
    assert over_all == pytest.approx(0.75)
    assert over_erased == pytest.approx(2.0)


def test_the_summary_puts_each_value_on_its_own_label_s_line():
    """New-user review: the commit counts sat on a line of their own, throughput and the ratio under p50."""
    result = _result(percentiles([0.1, 0.1, 0.1]), 3.0)
    lines = _rendered(result).splitlines()
    counts = next(line for line in lines if "store commits / shard retrains / registrations" in line)
    assert f"{result.batches} / {result.shard_retrains} / {result.registrations}" in counts
    throughput = next(line for line in lines if "throughput to commit" in line)
    assert "requests/s" in throughput


def test_the_warm_solve_and_its_ratio_are_shown_beside_the_solve_after_a_pause():
    """A solve after a pause ran up to 2x the CPU of the same solve right after another (ninth pass)."""
    exact, ratio = solve_ratio(percentiles([0.3, 0.3]), [0.6, 0.6, 0.6])
    warm, warm_ratio = solve_ratio(percentiles([0.3, 0.3]), [0.2, 0.2, 0.2])
    result = _result(exact, ratio).model_copy(
        update={"exact_solve_warm": warm, "ready_to_serve_over_warm_solve": warm_ratio, "quiet_waits": [1.0, None, 2.0]}
    )
    lines = _rendered(result).splitlines()
    assert "0.200" in next(line for line in lines if "exact solve alone, warm" in line)
    assert "0.50x" in next(line for line in lines if "/ exact solve p50" in line)
    assert "1.50x" in next(line for line in lines if "/ warm exact solve p50 (strict)" in line)
    assert "2 of 3" in next(line for line in lines if "solves timed on idle CPUs" in line)  # one never went quiet
