"""`expunge benchmark service --rate R --duration T`: the paced stream's pure parts and its options."""

from __future__ import annotations

import itertools

import pytest
from click.testing import CliRunner

from expunge.pipelines.benchmark_stream import even_spread
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
