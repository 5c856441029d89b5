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


def _readme_block(marker: str) -> str:
    text = (REPO_ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker}:[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README.md lost its {marker} block"
    return match.group(1)


def _readme_example() -> str:
    return _readme_block("sdk-example")


def _exact(config: Path, erased: list[str], tmp: Path) -> bool:
    job = load_job_config(config)
    hasher = SubjectHasher(KEY.encode())
    served = Coordinator(job.storage, hasher, pool_factory=local_pool)
    rows = without(synthetic_ratings(job.data.synthetic), erased)
    reference = from_scratch(tmp, served, rows, job, hasher)
    return all(constituents_equal(served.constituent_tensors(), reference.constituent_tensors()).values())


@pytest.mark.integration
@pytest.mark.slow  # ~75 s: the default run serves a head in the HTTP front-door and trust-boundary tests
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
        # The service on serve's own head reads the key from a file: never from the actor's runtime env.
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
    # This cluster's nodes lack the key: refused (it is never passed through Ray), saying how to fix it.
    refused = _run([EXPUNGE, "serve", "--config", str(config)], env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "cannot read the subject key on 2 of the cluster's 2 Ray node(s)" in refused.stderr
    assert KEY not in refused.stdout + refused.stderr
    # The fix it names: the key as a file every node reads (here both nodes share this machine's disk).
    key_file = tmp_path / "subject.key"
    key_file.write_text(KEY)
    key_file.chmod(0o600)
    settings = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**settings, "privacy": {"subject_key_file": str(key_file)}}))
    started = _run([EXPUNGE, "serve", "--config", str(config)], env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert json.loads(started.stdout)["started_head"] is False  # joined the cluster in RAY_ADDRESS
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


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening_ports(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket ``pid`` listens on (from /proc; IPv4 and IPv6)."""
    import os

    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, _width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                found.add((address, int(port, 16)))
    return found


@pytest.mark.integration
def test_the_http_front_door_401_403_202_then_done_with_tokens_made_by_the_cli(tmp_path):
    """The issue's curl session, with real HTTP against `expunge serve` on a fresh head, loopback only."""
    import os
    import time

    import httpx

    config = _trained_config(tmp_path, str(tmp_path / "store"), tracking=False)
    namespace = load_job_config(config).service.namespace
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update({"EXPUNGE_SUBJECT_KEY": KEY, "EXPUNGE_STATE_DIR": str(tmp_path / "state")})
    port = _free_port()
    started = _run([EXPUNGE, "serve", "--config", str(config), "--num-cpus", "2", "--port", str(port)], env)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        outcome = json.loads(started.stdout)
        url = outcome["url"]
        assert url == f"http://127.0.0.1:{port}"
        assert url in started.stderr  # `serve` prints the URL it really serves

        def token(*scopes: str) -> str:
            flags = [part for scope in scopes for part in ("--scope", scope)]
            made = _run([EXPUNGE, "tokens", "create", "--config", str(config), "--name", "recsys", *flags], env)
            assert made.returncode == 0, made.stdout + made.stderr
            return str(json.loads(made.stdout)["token"])

        reader, submitter = token("erasure:read"), token("erasure:submit", "erasure:read")
        body = {"subject_ids": ["user-3"], "idempotency_key": "GDPR-HTTP-1", "ticket": "DESK-1"}
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.post("/v1/erasures", json=body).status_code == 401
            forbidden = http.post("/v1/erasures", json=body, headers={"Authorization": f"Bearer {reader}"})
            assert forbidden.status_code == 403, forbidden.text
            accepted = http.post("/v1/erasures", json=body, headers={"Authorization": f"Bearer {submitter}"})
            assert accepted.status_code == 202, accepted.text
            status_url = accepted.json()["status_url"]
            deadline = time.monotonic() + 300
            while (state := http.get(status_url, headers={"Authorization": f"Bearer {reader}"}).json())[
                "state"
            ] != "done":
                assert time.monotonic() < deadline, state
                assert state["state"] != "failed", state
                time.sleep(0.2)
            assert state["rows_removed"] == 6
            paths = http.get("/openapi.json").json()["paths"]
            assert {"/v1/erasures", "/v1/erasures/{ref}", "/v1/healthz"} <= set(paths)
        # Nothing of the service or the head listens beyond loopback.
        marker = f"EXPUNGE_SERVE_HEAD={json.loads(Path(outcome['state_file']).read_text())['head']['temp_dir']}"
        listening = set()
        for pid in [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]:
            try:
                if marker in Path(f"/proc/{pid}/environ").read_text().split("\0"):
                    listening |= _listening_ports(pid)
            except OSError:
                continue
        assert ("0100007F", port) in listening, listening  # the API, on 127.0.0.1
        loopback = (
            "0100007F",
            "00000000000000000000000001000000",
            "0000000000000000FFFF00000100007F",
        )  # v4, ::1, v4-mapped
        assert all(address in loopback for address, _ in listening), listening
        # The README's recommender example, as a recommender service runs it: a URL and a token, no Ray.
        example = _readme_block("client-example").replace('"http://127.0.0.1:8470"', repr(url))
        example = f"token = {token('erasure:submit', 'erasure:read', 'recommend')!r}\n{example}"
        no_ray = {k: v for k, v in env.items() if not k.startswith(("RAY_", "EXPUNGE_SUBJECT"))}
        ran = _run([sys.executable, "-c", example], no_ray, timeout=300)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        export = _run([EXPUNGE, "requests", "export", "--config", str(config), "--format", "csv"], env)
        assert export.returncode == 0, export.stderr
        assert "DESK-1" in export.stdout
        assert "user-3" not in export.stdout
        assert f"{url}/v1/erasures/" in export.stdout  # the evidence link
    finally:
        stopped = _run([EXPUNGE, "serve", "--stop", "--namespace", namespace], env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert _exact(config, ["user-3", "user-7"], tmp_path)
