"""A Ray head on this machine that outlives the command that starts it (for ``expunge serve``).

``ray start --head`` with its own temp dir and free loopback ports; every process of it carries
a marker variable, so ``stop_head`` ends exactly those processes (never ``ray stop``, which ends
every Ray process of the user).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from expunge.orchestrator.errors import ClusterUnavailableError, ConfigError
from expunge.orchestrator.processes import end_processes, psutil_module

__all__ = ["HeadInfo", "start_head", "stop_head"]

_MARKER = "EXPUNGE_SERVE_HEAD"
_GRACE_S = 5.0
#: How long ``ray start --head`` may take before the start counts as failed.
_START_TIMEOUT_S = 300.0


class HeadInfo(BaseModel):
    """What ``expunge serve`` records about a head it started (in its state file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    address: str  # GCS address, host:port
    dashboard_url: str  # for `ray job submit --address`
    temp_dir: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ensure_auth_token(env: dict[str, str]) -> None:
    """Create this user's Ray token (``~/.ray/auth_token``) when none is set, as ``ray.init`` does.

    ``ray start`` refuses to start a token-authenticated head without one, so on a fresh machine
    ``expunge serve`` failed until some other Ray program had run. The token is never printed.
    """
    if env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH") or (Path.home() / ".ray" / "auth_token").is_file():
        return
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "get-auth-token", "--generate"],
        env=env,
        capture_output=True,  # stdout is the token itself
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise ConfigError(f"could not create a Ray auth token (`ray get-auth-token --generate`): {done.stderr[-1000:]}")


def start_head(num_cpus: int) -> HeadInfo:
    """Start a single-node Ray cluster on loopback with token authentication; returns once it answers.

    Raises:
        ConfigError: no Ray auth token could be made.
        ClusterUnavailableError: ``ray start`` failed or timed out (its output is in the message).
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="expunge-ray-", dir="/tmp"))  # short: Ray's socket paths are limited
    port, dashboard = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        {
            "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
            "RAY_AUTH_MODE": env.get("RAY_AUTH_MODE", "token"),
            _MARKER: str(temp_dir),
        }
    )
    if env["RAY_AUTH_MODE"] == "token":
        _ensure_auth_token(env)
    command = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--num-cpus={num_cpus}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    info = HeadInfo(address=f"127.0.0.1:{port}", dashboard_url=f"http://127.0.0.1:{dashboard}", temp_dir=str(temp_dir))
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=_START_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        stop_head(info)
        raise ClusterUnavailableError(
            "`ray start --head`",
            f"it did not finish within {_START_TIMEOUT_S:.0f} s; join a running cluster with --address",
        ) from exc
    if done.returncode != 0:
        stop_head(info)
        raise ClusterUnavailableError(
            "`ray start --head`",
            f"exit {done.returncode}; its output:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}\n"
            "Or join a running cluster with --address HOST:PORT",
        )
    return info


def _processes(info: HeadInfo) -> list[Any]:
    psutil = psutil_module()
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid == os.getpid():
                continue
            ours = any(info.temp_dir in arg for arg in proc.info["cmdline"] or [])
            if ours or proc.environ().get(_MARKER) == info.temp_dir:
                found[proc.pid] = proc
                for child in proc.children(recursive=True):  # agents Ray renamed (ray::DashboardAgent ...)
                    found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return list(found.values())


def stop_head(info: HeadInfo) -> int:
    """End every process of the head ``info`` describes (terminate, then kill); returns how many."""
    procs = _processes(info)
    end_processes(procs, _GRACE_S)
    shutil.rmtree(info.temp_dir, ignore_errors=True)
    return len(procs)


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None
