"""A private multi-process Ray cluster for tests: ``ray start`` on loopback, stopped by its own process list.

Each cluster gets a fresh temp dir under ``/tmp`` (short: Ray's socket paths have a length
limit), its own free ports, a random auth token (``RAY_AUTH_MODE=token``) and the project's
interpreter first on ``PATH`` (so a job's ``python`` entrypoint is the venv's). ``stop()`` ends
only the processes this cluster started, never ``ray stop`` (which ends every Ray process of the
user: other engineers' clusters and the test session's own ``ray_cluster``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expunge.orchestrator.processes import end_processes, psutil_module

__all__ = ["REPO_ROOT", "RayTestCluster", "start_cluster"]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Every process of a cluster inherits this variable (value: the cluster's temp dir), so the cluster's
#: processes are found even after Ray renamed them (``ray::IDLE``) or they lost their parent.
_MARKER = "EXPUNGE_TEST_RAY_CLUSTER"
#: Seconds between SIGTERM and SIGKILL (gcs_server often ignores SIGTERM for ~10 s).
_GRACE_S = 3.0
#: Small object stores: the tests move kilobytes, and the machine is shared.
_OBJECT_STORE_BYTES = 100_000_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _node_ports() -> list[str]:
    """Every port a node opens, chosen free now, so two test clusters (or a default one) never collide."""
    flags = [
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
    ]
    return [f"{flag}={_free_port()}" for flag in flags]


@dataclass
class RayTestCluster:
    """A running test cluster.

    Attributes:
        address: the GCS address, ``"127.0.0.1:PORT"`` (``RAY_ADDRESS`` for a driver).
        dashboard_url: ``"http://127.0.0.1:PORT"`` (``ray job submit --address``).
        env: the environment a client process needs (token, ``RAY_ADDRESS``, venv ``PATH``, the
            caller's S3 settings); pass it as ``subprocess.run(..., env=cluster.env)``.
        token: the cluster's auth token (also in ``env["RAY_AUTH_TOKEN"]``).
        temp_dir: the cluster's own ``--temp-dir`` root (logs under ``*/session_latest/logs``).
    """

    address: str
    dashboard_url: str
    env: dict[str, str]
    token: str
    temp_dir: Path
    _node_env: dict[str, str] = field(repr=False)
    _nodes: int = 1
    timings: dict[str, float] = field(default_factory=dict)

    def add_worker(self, num_cpus: int, resources: Mapping[str, float] | None = None) -> None:
        """Join one more node (``ray start --address``); returns once the cluster counts it alive."""
        began = time.perf_counter()
        node_dir = self.temp_dir / f"w{self._nodes}"
        _ray_start(
            [f"--address={self.address}", f"--temp-dir={node_dir}"],
            num_cpus,
            resources,
            self._node_env,
        )
        self._nodes += 1
        self.wait_for_nodes(self._nodes)
        self.timings[f"add_worker_{self._nodes - 1}_s"] = time.perf_counter() - began

    def alive_nodes(self) -> list[dict[str, Any]]:
        """The cluster's alive nodes, from the dashboard's state API (with the token)."""
        body = self.get_json("/api/v0/nodes?limit=100&detail=true")
        nodes = body["data"]["result"]["result"]
        return [n for n in nodes if n.get("state") == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            try:
                seen = len(self.alive_nodes())
            except (urllib.error.URLError, KeyError, OSError):
                seen = 0  # the dashboard is still starting
            if seen >= count:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the test cluster in {self.temp_dir} has {seen} alive node(s), wanted {count}")

    def get_json(self, path: str, token: str | None = "") -> Any:
        """GET ``path`` from the dashboard; ``token``: "" for the cluster's, None for no header."""
        request = urllib.request.Request(self.dashboard_url + path)
        token = self.token if token == "" else token
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def processes(self) -> list[Any]:
        """Live processes of this cluster: tagged by its marker, its temp dir on the command line, or their children."""
        psutil = psutil_module()
        found: dict[int, Any] = {}
        marker = str(self.temp_dir)
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if proc.pid == os.getpid():
                    continue
                ours = any(marker in arg for arg in proc.info["cmdline"] or [])
                if not ours:
                    ours = proc.environ().get(_MARKER) == marker
                if ours:
                    found[proc.pid] = proc
                    for child in proc.children(recursive=True):
                        found[child.pid] = child
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self) -> None:
        """Terminate, then kill, every process of this cluster; remove its temp dir. Idempotent.

        Raises:
            RuntimeError: a process of the cluster is still alive afterwards.
        """
        began = time.perf_counter()
        end_processes(self.processes(), _GRACE_S)
        left = self.processes()
        if left:
            raise RuntimeError(f"test cluster processes still alive after stop: {[p.pid for p in left]}")
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.timings["stop_s"] = time.perf_counter() - began


def _ray_start(args: list[str], num_cpus: int, resources: Mapping[str, float] | None, env: dict[str, str]) -> None:
    command = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        *args,
        f"--num-cpus={num_cpus}",
        f"--resources={json.dumps(dict(resources or {}))}",
        f"--object-store-memory={_OBJECT_STORE_BYTES}",
        "--disable-usage-stats",
        *_node_ports(),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def start_cluster(
    num_cpus: int = 1,
    resources: Mapping[str, float] | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> RayTestCluster:
    """Start a head node (``ray start --head``) on loopback with token auth; returns once it answers.

    ``extra_env`` is set on every node's processes (shard actors, job drivers) and in ``env``; the
    nodes otherwise inherit this process's environment (e.g. the S3 test server settings of
    ``tests/conftest.py``). On a failed start, whatever did start is stopped again.
    """
    began = time.perf_counter()
    temp_dir = Path(tempfile.mkdtemp(prefix="xr-", dir="/tmp"))
    token = secrets.token_hex(32)
    venv_bin = str(Path(sys.executable).parent)
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", _MARKER)}
    base.update(
        {
            "PATH": venv_bin + os.pathsep + base.get("PATH", ""),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "RAY_DEDUP_LOGS": "1",
            **(extra_env or {}),
        }
    )
    gcs_port, dashboard_port = _free_port(), _free_port()
    address = f"127.0.0.1:{gcs_port}"
    dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    client_env = {**base, "RAY_ADDRESS": address, "RAY_API_SERVER_ADDRESS": dashboard_url}
    cluster = RayTestCluster(
        address=address,
        dashboard_url=dashboard_url,
        env=client_env,
        token=token,
        temp_dir=temp_dir,
        _node_env={**base, _MARKER: str(temp_dir)},
    )
    try:
        _ray_start(
            [
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={gcs_port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}",
                f"--ray-client-server-port={_free_port()}",
                f"--temp-dir={temp_dir / 'h'}",
            ],
            num_cpus,
            resources,
            cluster._node_env,
        )
        cluster.wait_for_nodes(1)
    except BaseException:
        cluster.stop()
        raise
    cluster.timings["start_head_s"] = time.perf_counter() - began
    return cluster
