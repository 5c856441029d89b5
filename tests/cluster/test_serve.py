"""`expunge serve` end to end: the README's SDK example against a served store, `--stop`, and two nodes on S3."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from expunge.orchestrator.config import load_job_config
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.evidence.exactness import constituents_equal
from expunge.orchestrator.registry import Lineage
from expunge.pipelines.datasets import synthetic_ratings
from tests.cluster._cluster import REPO_ROOT
from tests.cluster.test_ray_jobs import KEY
from tests.engine import from_scratch, without

EXPUNGE = str(Path(sys.executable).parent / "expunge")


def _trained_config(tmp: Path, storage: str, tracking: bool) -> Path:
    """A small trained store (60 synthetic users, 3 shards x 2 slices), trained in this process."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = {
        "data": {"source": "synthetic", "synthetic": {"users": 60, "items": 30, "ratings_per_user": 6, "seed": 1}},
        "sharding": {"shards": 3, "slices": 2},
        "training": {"model": {"kind": "mf", "embedding_dim": 4}, "epochs": 2, "batch_size": 64, "cpus_per_shard": 0.3},
        "storage": {"uri": storage},
        "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "svc", "model_name": "svc-test"}
        if tracking
        else {"enabled": False},
        "service": {"namespace": f"svc-{tmp.name[-12:].replace('_', '-')}", "window_ms": 0},
    }
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    job = load_job_config(path)
    lineage = Lineage(job.tracking, job.storage) if tracking else None
    Coordinator(job.storage, SubjectHasher(KEY.encode()), lineage, pool_factory=local_pool).train(
        synthetic_ratings(job.data.synthetic), job
    )
    return path


def _run(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _readme_example() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    match = re.search(r"<!-- sdk-example:[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its SDK example block"
    return match.group(1)


def _exact(config: Path, erased: list[str], tmp: Path) -> bool:
    job = load_job_config(config)
    hasher = SubjectHasher(KEY.encode())
    served = Coordinator(job.storage, hasher, pool_factory=local_pool)
    rows = without(synthetic_ratings(job.data.synthetic), erased)
    reference = from_scratch(tmp, served, rows, job, hasher)
    return all(constituents_equal(served.constituent_tensors(), reference.constituent_tensors()).values())


@pytest.mark.integration
def test_the_readme_sdk_example_runs_against_expunge_serve_and_stop_ends_what_serve_started(tmp_path):
    import os

    config = _trained_config(tmp_path, str(tmp_path / "store"), tracking=True)
    namespace = load_job_config(config).service.namespace
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update({"EXPUNGE_SUBJECT_KEY": KEY, "EXPUNGE_STATE_DIR": str(tmp_path / "state")})
    # Two serves at once in one namespace: one starts the head and the service, the other finds them.
    command = [EXPUNGE, "serve", "--config", str(config), "--num-cpus", "2"]
    racing = [
        subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    finished = [(p.wait(timeout=600), *p.communicate()) for p in racing]
    outcomes = [json.loads(out) for code, out, _ in finished if code == 0]
    outcome = next((o for o in outcomes if o["started_head"]), {})
    try:
        assert [code for code, _, _ in finished] == [0, 0], finished
        assert sorted(o["already_running"] for o in outcomes) == [False, True]
        # The head serve started inherited the key: it never goes into the actor's runtime env.
        assert not any("runtime env" in err for _, _, err in finished)
        assert outcomes[0]["address"] == outcomes[1]["address"]
        other = _trained_config(tmp_path / "other", str(tmp_path / "other" / "store"), tracking=False)
        refused = _run([EXPUNGE, "serve", "--config", str(other), "--namespace", namespace], env)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "already runs service" in refused.stderr
        example = _readme_example().replace('namespace="expunge"', f"namespace={namespace!r}")
        # As a user's shell runs it: no RAY_AUTH_MODE (the SDK sets token auth itself).
        plain = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
        ran = _run([sys.executable, "-c", example], {**plain, "RAY_ADDRESS": outcome["address"]}, timeout=300)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert ran.stdout.splitlines()[0].startswith("erased [")
        # The CLI can use the warm service too (address from serve's record); --request-id is the idempotency key.
        command = [
            EXPUNGE,
            "forget",
            "--service",
            "--namespace",
            namespace,
            "--subject",
            "user-9",
            "--request-id",
            "T-9",
        ]
        first, again = _run(command, plain), _run(command, plain)
        assert first.returncode == 0, first.stdout + first.stderr
        assert json.loads(first.stdout)["status"] == "erased"
        assert json.loads(again.stdout)["request_id"] == json.loads(first.stdout)["request_id"]
    finally:
        stopped = _run([EXPUNGE, "serve", "--stop", "--namespace", namespace], env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    report = json.loads(stopped.stdout)
    assert report["service_stopped"] is True
    assert report["head_processes_stopped"] > 0
    assert not Path(outcome["state_file"]).exists()
    assert _exact(config, ["user-7", "user-9"], tmp_path)


@pytest.mark.integration
@pytest.mark.slow
def test_serve_on_two_nodes_with_s3_spreads_shard_actors_and_erases_exactly(ray_two_nodes, s3_bucket, tmp_path):
    config = _trained_config(tmp_path, f"s3://{s3_bucket}/store", tracking=False)
    namespace = load_job_config(config).service.namespace
    env = {**ray_two_nodes.env, "EXPUNGE_SUBJECT_KEY": KEY, "EXPUNGE_STATE_DIR": str(tmp_path / "state")}
    started = _run([EXPUNGE, "serve", "--config", str(config)], env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert json.loads(started.stdout)["started_head"] is False  # joined the cluster in RAY_ADDRESS
        # This cluster's nodes lack the key, so serve passes it, and says so.
        assert "lacks EXPUNGE_SUBJECT_KEY" in started.stderr
        client = (
            "import json, ray\n"
            "from ray.util.state import list_actors\n"
            "from expunge import RayClient\n"
            f"client = RayClient.connect(namespace={namespace!r})\n"
            "receipt = client.forget(['user-11'])\n"
            "nodes = sorted({a.node_id for a in list_actors(filters=[('class_name', '=', 'ShardActor'),"
            " ('state', '=', 'ALIVE')])})\n"
            "print(json.dumps({'status': receipt.status, 'nodes': nodes}))\n"
        )
        ran = _run([sys.executable, "-c", client], env, timeout=300)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        result = json.loads(ran.stdout.strip().splitlines()[-1])
        assert result["status"] == "erased"
        assert set(result["nodes"]) == {n["node_id"] for n in ray_two_nodes.alive_nodes()}
    finally:
        stopped = _run([EXPUNGE, "serve", "--stop", "--namespace", namespace], env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert json.loads(stopped.stdout)["head_processes_stopped"] == 0  # the cluster is the test's, not serve's
    assert ray_two_nodes.alive_nodes()  # still up
    assert _exact(config, ["user-11"], tmp_path)


@pytest.mark.integration
@pytest.mark.slow
def test_serve_with_a_local_store_on_two_nodes_is_refused(ray_two_nodes, tmp_path):
    config = _trained_config(tmp_path, str(tmp_path / "store"), tracking=False)
    env = {**ray_two_nodes.env, "EXPUNGE_SUBJECT_KEY": KEY, "EXPUNGE_STATE_DIR": str(tmp_path / "state")}
    refused = _run([EXPUNGE, "serve", "--config", str(config)], env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "not shared between the 2 nodes" in refused.stderr
