"""`expunge benchmark accuracy` and `expunge recommend`: metrics, the exact ensemble across S, the CLI forms."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pytest
from click.testing import CliRunner, Result

from expunge.orchestrator.config import ItemStatsConfig, MFConfig, SyntheticRatingsConfig, TrainingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.pipelines.benchmark_accuracy import ndcg_recall_at_k, plot, run, table
from expunge.pipelines.cli import app
from expunge.pipelines.datasets import synthetic_ratings
from tests.engine import job

KEY = "3f9c2b7e1d8a4f6052c7e9b1a3d5f7082e4c6a8b0d2f4e6a8c0e2a4c6e8a0c2e"


@pytest.mark.parametrize(
    ("ranked", "relevant", "ndcg", "recall"),
    [
        ([1, 2, 3], {1, 2}, 1.0, 1.0),  # both relevant items on top
        ([9, 8, 7], {1, 2}, 0.0, 0.0),
        ([9, 1], {1}, 1 / 1.5849625007211563, 1.0),  # one hit at rank 2: 1/log2(3) over the ideal 1
        (list(range(20)), set(range(15)), 1.0, 10 / 15),  # ideal = 10 hits, recall over all 15
    ],
)
def test_ndcg_and_recall_at_10(ranked, relevant, ndcg, recall):
    assert ndcg_recall_at_k(ranked, relevant) == pytest.approx((ndcg, recall))


def _ratings_file(path: Path) -> Path:
    lines = [
        f"{u}\t{i}\t{1 + (u * i + u // 3) % 5}\t{880000000 + u * 100 + i}" for u in range(1, 41) for i in range(1, 21)
    ]
    path.write_text("\n".join(line for n, line in enumerate(lines) if n % 3) + "\n")
    return path


def test_the_statistics_ensemble_scores_the_same_at_every_s_and_everything_is_reported(tmp_path):
    training = TrainingConfig(model=MFConfig(embedding_dim=4), epochs=2, batch_size=64, cpus_per_shard=0.5)
    results = run(
        _ratings_file(tmp_path / "u.data"),
        shard_counts=(3,),
        slices=2,
        item_stats=ItemStatsConfig(factors=2, neighbours=5),
        training=training,
        erasures=1,
        pool_factory=local_pool,
    )
    assert [(r.model, r.shards, r.slices, r.whole_data) for r in results] == [
        ("popularity", 1, 1, True),
        ("item_stats", 1, 1, True),
        ("item_stats", 3, 2, False),
        ("item_stats_edlae", 1, 1, True),
        ("item_stats_edlae", 3, 2, False),
        ("mf", 1, 1, True),
        ("mf", 3, 2, False),
    ]
    stats = [r for r in results if r.model == "item_stats"]
    assert len({(r.rmse, r.mae, r.ndcg_at_10, r.recall_at_10, r.recall_at_20) for r in stats}) == 1  # exact
    edlae = [r for r in results if r.model == "item_stats_edlae"]
    assert len({(r.rmse, r.mae, r.ndcg_at_10, r.recall_at_10, r.recall_at_20) for r in edlae}) == 1
    assert (edlae[0].rmse, edlae[0].mae) == (stats[0].rmse, stats[0].mae)  # the ranker changes the top-N only
    assert all(r.recall_at_20 is not None and r.recall_at_10 <= r.recall_at_20 <= 1.0 for r in results)
    assert all(None not in (r.rmse, r.mae, r.erasure_seconds) for r in results[1:])
    assert results[0].rmse is None
    assert 0.0 <= results[0].ndcg_at_10 <= 1.0
    mf_sisa = results[-1]
    assert mf_sisa.speedup_vs_monolith is not None
    assert mf_sisa.speedup_vs_monolith > 0
    assert mf_sisa.speedup is not None
    assert mf_sisa.ideal_speedup_vs_monolith is not None
    assert mf_sisa.ideal_speedup_vs_monolith > 1.0  # one of three shards retrains
    assert stats[1].ideal_speedup_vs_monolith is None  # no epochs: the arithmetic is not the gradient one
    plot(results, tmp_path / "accuracy.png", "test")
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert table(results, "test").row_count == len(results)


def test_an_unknown_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        run(_ratings_file(tmp_path / "u.data"), models=["svd"])


def _expunge(*args: str) -> Result:
    """The ``expunge`` program in-process (each recipe is imported once per test session)."""
    return CliRunner().invoke(app, list(args), env={"EXPUNGE_SUBJECT_KEY": KEY, "COLUMNS": "200"})


@pytest.mark.parametrize(
    ("args", "program"),
    [
        (["benchmark", "accuracy", "--help"], "expunge benchmark accuracy"),
        (["benchmark", "erasure", "--help"], "expunge benchmark erasure"),
        (["benchmark", "--help"], "expunge benchmark"),  # the old form still runs the erasure benchmark
    ],
)
def test_benchmark_sub_jobs_and_the_old_form(args, program):
    result = _expunge(*args)
    assert result.exit_code == 0, result.output
    assert f"Usage: {program} [OPTIONS]" in result.stdout
    assert ("--models" in result.stdout) == (args[1] == "accuracy")


def test_recommend_prints_unseen_items_as_json_and_refuses_an_unknown_subject(tmp_path):
    rows = synthetic_ratings(SyntheticRatingsConfig(users=30, items=25, ratings_per_user=6, seed=2))
    store = tmp_path / "store"
    Coordinator(str(store), SubjectHasher(KEY.encode()), pool_factory=local_pool).train(
        rows, job(ItemStatsConfig(factors=2), shards=2, slices=2)
    )
    result = _expunge("recommend", "--storage", str(store), "--subject", "user-3", "-k", "4")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    rated = set(rows.filter(pc.equal(rows.column("subject_id"), "user-3")).column("item_id").to_pylist())
    assert len(answer["items"]) == 4
    assert not set(answer["items"]) & rated
    assert answer["subject_digest"] == SubjectHasher(KEY.encode()).digest("user-3")
    assert "user-3" not in result.stdout
    missing = _expunge("recommend", "--storage", str(store), "--subject", "nobody")
    assert missing.exit_code == 2
    assert "no rows" in missing.output


def test_movielens_1m_layout_runs_too(tmp_path):
    """``ratings.dat`` (UserID::MovieID::Rating::Timestamp) is read by the same loader."""
    lines = [f"{u}::{i}::{1 + (u + i) % 5}::{970000000 + u * 50 + i}" for u in range(1, 31) for i in range(1, 16)]
    data = tmp_path / "ratings.dat"
    data.write_text("\n".join(line for n, line in enumerate(lines) if n % 4) + "\n")
    results = run(
        data, shard_counts=(2,), slices=2, models=["item_stats", "popularity"], erasures=0, pool_factory=local_pool
    )
    assert [(r.model, r.shards) for r in results] == [("popularity", 1), ("item_stats", 1), ("item_stats", 2)]
    assert results[1].rmse == results[2].rmse
    assert results[1].erasure_seconds is None
