"""Issue 20's trust boundary, end to end: the subject key stays out of Ray, and a served head keeps to loopback."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from expunge.orchestrator.config import load_job_config
from tests.cluster._proc import environment, is_loopback, listening_sockets
from tests.cluster.test_ray_jobs import KEY
from tests.cluster.test_serve import EXPUNGE, _run, _trained_config

#: Run as a plain client of the served cluster (no key in its environment): what Ray and its
#: dashboard hold about the service, and the processes of the service and its shard actors.
_INSPECT = """
import json, sys, ray
from ray.util import state
ray.init(namespace=sys.argv[1])
service = ray.get_actor(sys.argv[2], namespace=sys.argv[1])
listed = {
    name: repr(getattr(state, f"list_{name}")(detail=True, limit=10_000, raise_on_missing_output=False))
    for name in ("actors", "tasks", "jobs", "runtime_envs", "workers", "nodes", "cluster_events")
}
pids = {"service": ray.get(service.pid.remote()), "shards": ray.get(service.shard_actor_pids.remote())}
print(json.dumps({"listed": listed, "pids": pids}))
"""


def _head_processes(temp_dir: str) -> list[int]:
    """Every process of the head ``serve`` started (they carry its marker variable)."""
    marker = f"EXPUNGE_SERVE_HEAD={temp_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _files_holding(root: Path, secret: bytes) -> list[str]:
    holding = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and secret in path.read_bytes():
                holding.append(str(path))
        except OSError:
            continue
    return holding


@pytest.mark.integration
def test_a_served_store_keeps_the_key_out_of_ray_and_every_port_on_loopback(tmp_path):
    config = _trained_config(tmp_path, str(tmp_path / "store"), tracking=False)
    settings = yaml.safe_load(config.read_text())
    settings["service"]["port"] = 0  # this test is about Ray; the HTTP API has its own
    config.write_text(yaml.safe_dump(settings))
    job = load_job_config(config)
    namespace = job.service.namespace
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "EXPUNGE_SUBJECT_KEY")}
    keyed = {**env, "EXPUNGE_SUBJECT_KEY": KEY, "EXPUNGE_STATE_DIR": str(tmp_path / "state")}
    started = _run([EXPUNGE, "serve", "--config", str(config), "--num-cpus", "2"], keyed)
    assert started.returncode == 0, started.stdout + started.stderr
    outcome = json.loads(started.stdout)
    temp_dir = json.loads(Path(outcome["state_file"]).read_text())["head"]["temp_dir"]
    key_file = Path(outcome["subject_key_file"])
    try:
        # The service reads the key from a file only this user can read; the head never had it.
        assert key_file.read_text() == KEY
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
        forgot = _run([EXPUNGE, "forget", "--service", "--namespace", namespace, "--subject", "user-5"], keyed)
        assert forgot.returncode == 0, forgot.stdout + forgot.stderr
        assert json.loads(forgot.stdout)["status"] == "erased"

        # `serve --address` against a cluster whose nodes lack the key (this one) is refused, saying how to fix it.
        other = _trained_config(tmp_path / "other", str(tmp_path / "other" / "store"), tracking=False)
        refused = _run([EXPUNGE, "serve", "--config", str(other), "--address", outcome["address"]], keyed)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "cannot read the subject key on 1 of the cluster's 1 Ray node(s)" in refused.stderr
        assert "privacy.subject_key_file" in refused.stderr

        inspected = _run(
            [sys.executable, "-c", _INSPECT, namespace, job.service.name], {**env, "RAY_ADDRESS": outcome["address"]}
        )
        assert inspected.returncode == 0, inspected.stdout + inspected.stderr
        report = json.loads(inspected.stdout.strip().splitlines()[-1])
        assert report["pids"]["shards"], report["pids"]
        head = _head_processes(temp_dir)
        assert report["pids"]["service"] in head
        assert set(report["pids"]["shards"].values()) <= set(head)

        # Not in the dashboard's lists of actors, tasks, jobs, runtime envs, workers or events ...
        assert [name for name, text in report["listed"].items() if KEY in text] == []
        # ... nor in any file of the head's session (logs, runtime envs, the GCS's files) ...
        assert _files_holding(Path(temp_dir), KEY.encode()) == []
        # ... nor in the environment of any process of the head: shard actors, the service, Ray's own.
        assert [pid for pid in head if "EXPUNGE_SUBJECT_KEY" in environment(pid)] == []
        assert [pid for pid in head if KEY in "\0".join(environment(pid).values())] == []
        # Nor in what `serve` and the CLI printed.
        assert KEY not in started.stdout + started.stderr + forgot.stdout + forgot.stderr + refused.stderr

        # Every port of the head (Ray's servers, the service's and the shard actors' workers) is on loopback.
        sockets = listening_sockets(head)
        assert len(sockets) >= 5, sockets
        assert [s for s in sockets if not is_loopback(s[0])] == []
        assert outcome["listening"]
        assert [a for a in outcome["listening"] if not is_loopback(a.rpartition(":")[0].strip("[]"))] == []
    finally:
        stopped = _run([EXPUNGE, "serve", "--stop", "--namespace", namespace], keyed)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not key_file.exists()  # `serve --stop` deletes it
