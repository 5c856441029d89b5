"""A CLI erasure without a cluster retrains few shards in its own process: Ray never starts (issue 22).

``expunge forget`` runs as the program does, in a fresh process with RAY_ADDRESS unset; its
result is compared bit for bit with training from scratch without the subject. The choice
itself (``FirstCallPool``) is checked without Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from expunge.orchestrator.config import SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.evidence.exactness import constituents_equal
from expunge.orchestrator.pool import FirstCallPool, InProcessRule, LocalShardPool
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from tests.engine import from_scratch, job, without

KEY = "5b1e0c9d7a3f2e4b6c8d0a1f3e5b7c9d1e3f5a7b9c0d2e4f6a8b0c2d4e6f8a0b"
HASHER = SubjectHasher(KEY.encode())
CONFIG = job(shards=3, slices=2)


class _RayWasStarted(Exception):
    pass


def _start_ray(why: str) -> None:
    raise _RayWasStarted(why)


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, pa.Table]:
    rows = synthetic_ratings(SyntheticRatingsConfig(users=24, items=15, ratings_per_user=6, seed=3))
    coordinator = Coordinator(str(tmp_path / "store"), HASHER, pool_factory=local_pool)
    coordinator.train(rows, CONFIG)
    coordinator.close()
    return tmp_path / "store", rows


def _pool(root: Path, limit: int, max_cpu_s: float = 10.0, shard_cpu_s: float = 0.0) -> FirstCallPool:
    coordinator = Coordinator(str(root), HASHER, pool_factory=local_pool)
    manifest = coordinator.require_manifest()
    return FirstCallPool(
        coordinator.storage,
        manifest.training,
        manifest.model,
        dict(enumerate(manifest.shard_versions)),
        rule=InProcessRule(limit, max_cpu_s, shard_cpu_s),
        start_ray=_start_ray,
    )


def test_a_first_call_on_few_shards_runs_them_here_and_loads_only_those(store):
    pool = _pool(store[0], limit=1)
    assert pool.call("ready", {2: ()}) == {2: 2}
    assert isinstance(pool.chosen, LocalShardPool)
    assert set(pool.chosen.shards) == {2}  # the other shards were never loaded
    assert pool.call("ready", {0: (), 1: ()}) == {0: 0, 1: 1}  # the choice holds for the pool's life


def test_a_first_call_on_more_shards_than_the_limit_starts_ray_and_says_why(store):
    pool = _pool(store[0], limit=1)
    with pytest.raises(_RayWasStarted, match=r"2 shards to retrain, more than erasure.in_process_max_shards \(1\)"):
        pool.call("ready", {0: (), 1: ()})
    with pytest.raises(_RayWasStarted):
        _pool(store[0], limit=0).call("ready", {0: ()})  # 0: always Ray


def test_shards_whose_training_cost_more_than_the_cpu_bound_start_ray(store):
    # Two shards that took 6 CPU s each to train: 12 s one after another is more than Ray's start-up.
    pool = _pool(store[0], limit=8, max_cpu_s=10.0, shard_cpu_s=6.0)
    with pytest.raises(_RayWasStarted, match=r"took 12.0 CPU s, more than erasure.in_process_max_cpu_s \(10\)"):
        pool.call("ready", {0: (), 1: ()})
    assert _pool(store[0], limit=8, max_cpu_s=10.0, shard_cpu_s=6.0).call("ready", {1: ()}) == {1: 1}


@pytest.mark.parametrize(
    ("shards", "rule", "here"),
    [
        (1, InProcessRule(1), True),
        (2, InProcessRule(1), False),
        (1, InProcessRule(0), False),
        (3, InProcessRule(8, 10.0, 3.0), True),
        (4, InProcessRule(8, 10.0, 3.0), False),
        (8, InProcessRule(8, 10.0, 0.0), True),  # training CPU unknown: only the count
    ],
)
def test_the_in_process_rule(shards, rule, here):
    assert rule.decide(shards)[0] is here


@pytest.mark.integration
def test_a_cli_erasure_on_one_shard_without_a_cluster_never_starts_ray_and_is_exact(store, tmp_path):
    root, rows = store
    subject = sorted({str(s) for s in rows.column(SUBJECT_ID).to_pylist()})[5]
    config = tmp_path / "job.yaml"
    config.write_text(f"storage: {{uri: '{root}'}}\ntracking: {{enabled: false}}\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"EXPUNGE_SUBJECT_KEY": KEY}
    done = subprocess.run(
        [sys.executable, "-m", "expunge.pipelines.forget", "--config", str(config), "--subject", subject, "-v"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    receipt = json.loads(done.stdout)
    assert receipt["status"] == "erased"
    assert len(receipt["shards"]) == 1
    assert "1 shard(s) to retrain: in this process, without Ray" in done.stderr
    assert "starting Ray" not in done.stderr

    erased = Coordinator(str(root), HASHER, pool_factory=local_pool)
    reference = from_scratch(tmp_path, erased, without(rows, [subject]), CONFIG, HASHER)
    equal = constituents_equal(erased.constituent_tensors(), reference.constituent_tensors())
    assert equal == dict.fromkeys(range(CONFIG.sharding.shards), True)


def test_forget_help_offers_the_in_process_bound(capsys):
    from expunge.pipelines.cli import main

    with pytest.raises(SystemExit):
        main(["forget", "--help"])
    assert "--in-process-max-shards" in capsys.readouterr().out
