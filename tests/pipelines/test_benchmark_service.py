"""`expunge benchmark service`: its pure summaries, and one tiny in-process run against the session cluster."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from expunge.orchestrator.config import MFConfig, SyntheticRatingsConfig, TrainingConfig
from expunge.pipelines.benchmark_service import ServiceBenchmarkSettings, latency_checks, percentiles, run
from expunge.pipelines.cli import app
from expunge.pipelines.datasets import synthetic_ratings


def test_percentiles_interpolate_like_numpy_and_take_no_samples():
    assert percentiles([3.0, 1.0, 2.0, 4.0]).model_dump() == pytest.approx(
        {"n": 4, "p50": 2.5, "p95": 3.85, "p99": 3.97, "max": 4.0}
    )
    assert percentiles([]).model_dump() == {"n": 0, "p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}


@pytest.mark.parametrize(
    ("committed", "registered", "retrain", "passed"),
    [
        (1.8, 4.9, 1.0, [True, True]),  # 1.8 = 1.5 x 1.0 + 0.3 exactly
        (1.81, 4.9, 1.0, [False, True]),
        (0.2, 5.0, 0.0, [True, False]),  # registered must be strictly under 5 s
    ],
)
def test_latency_checks_are_the_issues_targets(committed, registered, retrain, passed):
    checks = latency_checks(committed, registered, retrain)
    assert [c.passed for c in checks] == passed
    assert checks[0].limit == pytest.approx(1.5 * retrain + 0.3)


def test_the_benchmark_is_a_subjob_of_benchmark():
    result = CliRunner().invoke(app, ["benchmark", "service", "--help"])
    assert result.exit_code == 0, result.output
    assert "--load-requests" in result.output


@pytest.mark.slow  # two trained stores with MLflow and two service starts: 50-110 s on a busy 2-core machine
def test_a_tiny_run_completes_every_request_and_coalesces_the_load(ray_cluster):
    settings = ServiceBenchmarkSettings(
        shards=2, slices=2, requests=3, cold=0, load_subjects=40, load_requests=40, load_items=20,
        load_ratings_per_user=5, threads=8, window_ms=500,
    )  # fmt: skip
    training = TrainingConfig(model=MFConfig(embedding_dim=4), epochs=2, batch_size=64, cpus_per_shard=0.5)
    rows = synthetic_ratings(SyntheticRatingsConfig(users=30, items=20, ratings_per_user=5, seed=3))

    result = run(rows, training, settings)

    latency = result.latency
    assert latency is not None
    assert latency.committed.n == latency.registered.n == latency.retrain.n == 3
    assert all(r >= c > 0 for c, r in zip(latency.committed_seconds, latency.registered_seconds, strict=True))
    assert latency.monolith_retrain_seconds > 0
    assert latency.cold_cli_seconds == []
    load = result.load
    assert load.complete
    assert load.stages == {"registered": 40}
    assert load.committed.n == load.registered.n == 40
    assert 1 <= load.batches < 40  # coalesced: fewer store commits than requests
    assert load.shard_retrains <= 2 * load.batches
    assert [m.at for m in load.memory] == ["start", "middle", "end"]
    assert all(m.coordinator_peak_rss_bytes > 0 for m in load.memory)


def test_a_latency_row_that_measured_nothing_shows_n_a_not_zero():
    """New-user review: ``--cold 0`` printed the cold CLI's p50 as 0.000 s, as if it took no time."""
    from rich.console import Console

    from expunge.pipelines.benchmark_service import LatencyResult, latency_table

    some = percentiles([0.5, 0.7])
    latency = LatencyResult(
        rows=10,
        subjects=3,
        service_start_seconds=1.0,
        committed=some,
        registered=some,
        retrain=some,
        committed_seconds=[0.5, 0.7],
        registered_seconds=[0.5, 0.7],
        retrain_seconds=[0.5, 0.7],
        cold_cli_seconds=[],
        cold_cli_retrain_seconds=[],
        monolith_train_seconds=2.0,
        monolith_retrain_seconds=1.0,
        monolith_erasure_seconds=1.5,
        checks=[],
    )
    console = Console(width=200, record=True)
    console.print(latency_table(latency))
    lines = console.export_text().splitlines()
    cold = next(line for line in lines if "cold CLI" in line)
    assert [cell.strip() for cell in cold.split("│")[2:6]] == ["0", "n/a", "n/a", "n/a"]
    committed = next(line for line in lines if "SDK forget" in line)
    assert "0.600" in committed
