"""A ``ray start`` cluster of two nodes: shard actors spread over both, and a local store refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.cluster._cluster import REPO_ROOT
from tests.cluster.test_ray_jobs import KEY, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # two nodes start in ~15-25 s here


def test_train_with_a_local_store_on_two_nodes_exits_2_with_the_fix(ray_two_nodes, tmp_path):
    config = write_config(tmp_path, str(tmp_path / "store"))
    env = {**ray_two_nodes.env, "EXPUNGE_SUBJECT_KEY": KEY}
    done = subprocess.run(
        [sys.executable, "-m", "expunge.pipelines.train", "--config", str(config)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "not shared between the 2 nodes" in done.stderr
    assert "use an s3:// storage URI" in done.stderr
    assert not (tmp_path / "store").exists()  # refused before any shard wrote


def test_shard_actors_spread_over_both_nodes_and_erasure_stays_exact(ray_two_nodes, s3_bucket):
    done = subprocess.run(
        [sys.executable, "-m", "tests.cluster._two_node_driver", f"s3://{s3_bucket}"],
        cwd=REPO_ROOT,
        env={**ray_two_nodes.env, "EXPUNGE_SUBJECT_KEY": KEY},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    cluster_nodes = {node["node_id"] for node in ray_two_nodes.alive_nodes()}
    assert len(cluster_nodes) == 2
    assert set(result["nodes"].values()) == cluster_nodes  # every node holds at least one of the 4 shards
    assert result == {**result, "status": "erased", "exact": True, "shards": 4}
