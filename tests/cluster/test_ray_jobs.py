"""Train and forget as Ray Jobs (``ray job submit --working-dir .``) on a token-authenticated ``ray start`` head."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest
import yaml

from expunge.orchestrator.digests import SubjectHasher
from tests.cluster._cluster import REPO_ROOT, RayTestCluster

pytestmark = pytest.mark.integration

KEY = (
    "00999b0ec2e75a4bbae64af43a84b30fe4af6a2dc2487f47c5c61e7d4eb0e0ea"  # 32 random bytes, hex (a weaker key is refused)
)
RAY = str(Path(sys.executable).parent / "ray")


def write_config(tmp: Path, storage: str) -> Path:
    """A small job: 60 synthetic users, 2 shards x 2 slices, MLflow in a sqlite file under ``tmp``."""
    config = {
        "data": {
            "source": "synthetic",
            "synthetic": {"users": 60, "items": 30, "ratings_per_user": 6, "seed": 1},
            "test_fraction": 0.0,
        },
        "sharding": {"shards": 2, "slices": 2},
        "training": {
            "model": {"kind": "mf", "embedding_dim": 4},
            "epochs": 2,
            "batch_size": 64,
            "cpus_per_shard": 0.5,
        },
        "storage": {"uri": storage},
        "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "jobs", "model_name": "jobs-test"},
    }
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def submit(cluster: RayTestCluster, *entrypoint: str) -> subprocess.CompletedProcess[str]:
    """``ray job submit`` (waits for the job); the key reaches the job through its runtime env only."""
    runtime_env = {"env_vars": {"EXPUNGE_SUBJECT_KEY": KEY}}
    command = [RAY, "job", "submit", "--address", cluster.dashboard_url, "--working-dir", "."]
    command += ["--runtime-env-json", json.dumps(runtime_env), "--", "python", "-m", *entrypoint]
    return subprocess.run(command, cwd=REPO_ROOT, env=cluster.env, capture_output=True, text=True, timeout=600)


def receipt_in(output: str) -> dict[str, object]:
    """The indented receipt JSON that ``expunge.pipelines.forget`` prints, out of the job's log stream."""
    lines = output.splitlines()
    start = lines.index("{")
    end = lines.index("}", start)
    return json.loads("\n".join(lines[start : end + 1]))  # type: ignore[no-any-return]


@pytest.mark.slow  # ~110 s here: two jobs of ~40-50 s each (driver imports, actors, MLflow)
def test_train_then_forget_as_ray_jobs(ray_head, tmp_path):
    config = write_config(tmp_path, str(tmp_path / "store"))
    began = time.perf_counter()
    trained = submit(ray_head, "expunge.pipelines.train", "--config", str(config))
    train_s = time.perf_counter() - began
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "succeeded" in trained.stdout
    summary = json.loads(next(line for line in trained.stdout.splitlines() if line.startswith('{"storage"')))
    assert summary["ensemble_version"] == 1

    began = time.perf_counter()
    forgot = submit(ray_head, "expunge.pipelines.forget", "--config", str(config), "--subject", "user-3")
    forget_s = time.perf_counter() - began
    assert forgot.returncode == 0, forgot.stdout + forgot.stderr
    receipt = receipt_in(forgot.stdout)
    assert receipt["status"] == "erased"
    assert receipt["subject_digests"] == [SubjectHasher(KEY.encode()).digest("user-3")]
    assert receipt["not_found_digests"] == []
    assert receipt["rows_removed"] == 6
    print(f"timings: {ray_head.timings} train_job_s={train_s:.1f} forget_job_s={forget_s:.1f}")


def test_the_working_dir_upload_leaves_out_the_venv_and_caches():
    """What ``--working-dir .`` uploads: Ray's default excludes plus .gitignore (kilobytes, not the 2 GB venv)."""
    packaged = _package_bytes(REPO_ROOT)
    assert packaged < 5_000_000, packaged


def _package_bytes(root: Path) -> int:
    import tempfile

    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import create_package

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "pkg.zip"
        create_package(
            str(root),
            target,
            include_gitignore=True,
            excludes=ray_constants.get_runtime_env_default_excludes(),
        )
        return target.stat().st_size


@pytest.mark.slow  # starts the head (~9-15 s)
def test_a_client_without_the_clusters_token_is_refused(ray_head):
    assert "data" in ray_head.get_json("/api/v0/nodes?limit=1")
    for token in (None, "not-the-token-0123456789abcdef"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            ray_head.get_json("/api/jobs/", token=token)
        assert refused.value.code in (401, 403)
