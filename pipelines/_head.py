"""A Ray head on this machine that outlives the command that starts it (for ``expunge serve``).

``ray start --head`` with its own temp dir and free ports, every server of it on loopback unless
told another host; every process of it carries a marker variable, so ``stop_head`` ends exactly
those processes (never ``ray stop``, which ends every Ray process of the user).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict

from expunge.orchestrator.cluster import MAPPED_LOOPBACK, client_address
from expunge.orchestrator.errors import ClusterUnavailableError, ConfigError
from expunge.orchestrator.processes import end_processes, psutil_module
from expunge.shards.niceness import WORKER_NICENESS_ENV

__all__ = ["HeadInfo", "client_address", "listening_addresses", "start_head", "stop_head"]

_MARKER = "EXPUNGE_SERVE_HEAD"
_GRACE_S = 5.0
#: How long ``ray start --head`` may take before the start counts as failed.
_START_TIMEOUT_S = 300.0
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_EVERY_INTERFACE = frozenset({"0.0.0.0", "::"})
#: How clients reach a loopback head's GCS: 127.0.0.1 written as an IPv4-mapped IPv6 address. Ray
#: turns "127.0.0.1", "localhost" and "::1" given to `ray.init` into the machine's network address
#: (services.resolve_ip_for_localhost), where a loopback head does not listen; this spelling of the
#: same address it leaves as it is, so a client needs no Ray setting to connect.
_MAPPED_LOOPBACK = MAPPED_LOOPBACK


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


class _Binding(NamedTuple):
    flags: list[str]  # for `ray start`
    env: dict[str, str]  # for every process of the head
    gcs_host: str  # where clients reach the GCS
    dashboard_host: str


def _binding(host: str, node_ip: str) -> _Binding:
    """Where a head's servers listen for ``host`` (pure).

    ``node_ip``: the machine's address, used when ``host`` names every interface (0.0.0.0, ::).
    """
    if host in _LOOPBACK_HOSTS:
        # `ray start` also turns a loopback --node-ip-address into the machine's address, and Ray
        # binds its servers (GCS, raylet, object manager, agents, core workers) to the node address.
        # In Ray's single-machine mode (meant for macOS and Windows) the node address stays
        # 127.0.0.1, and such a head takes no other nodes: what loopback means anyway.
        return _Binding(
            ["--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1"],
            {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
            _MAPPED_LOOPBACK,
            "127.0.0.1",
        )
    if host in _EVERY_INTERFACE:
        return _Binding([f"--node-ip-address={node_ip}", f"--dashboard-host={host}"], {}, node_ip, node_ip)
    return _Binding([f"--node-ip-address={host}", f"--dashboard-host={host}"], {}, host, host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def start_head(num_cpus: int, host: str = "127.0.0.1", withheld_env: Collection[str] = ()) -> HeadInfo:
    """Start a single-node Ray cluster with token authentication; returns once it answers.

    ``host``: where its servers listen: loopback (the default) keeps every Ray port of the head
    (GCS, raylet, object manager, dashboard and its agent, metrics, runtime-env agent, Ray client
    server, workers) on 127.0.0.1, and its address reads ``[::ffff:127.0.0.1]:PORT``; an address,
    or 0.0.0.0 for every interface, exposes them there.
    ``withheld_env``: variables of this process the head's processes must not inherit (the
    subject key: a head's every worker would hold it).

    Raises:
        ConfigError: no Ray auth token could be made.
        ClusterUnavailableError: ``ray start`` failed or timed out (its output is in the message).
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="expunge-ray-", dir="/tmp"))  # short: Ray's socket paths are limited
    port, dashboard, client_server, agent = _free_port(), _free_port(), _free_port(), _free_port()
    metric_ports = {"AUTOSCALER_METRIC_PORT": str(_free_port()), "DASHBOARD_METRIC_PORT": str(_free_port())}
    node_ip = "" if host not in _EVERY_INTERFACE else _machine_address()
    binding = _binding(host, node_ip)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and k not in withheld_env}
    env.update(
        {
            "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
            "RAY_AUTH_MODE": env.get("RAY_AUTH_MODE", "token"),
            # Ray starts workers at niceness 15; the head Expunge starts runs them at 0 (shards/niceness.py).
            WORKER_NICENESS_ENV: env.get(WORKER_NICENESS_ENV, "0"),
            _MARKER: str(temp_dir),
            **metric_ports,
            **binding.env,
        }
    )
    if env["RAY_AUTH_MODE"] == "token":
        _ensure_auth_token(env)
    command = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        *binding.flags,
        f"--port={port}",
        f"--dashboard-port={dashboard}",
        # Free ports, not Ray's fixed defaults (10001, 52365, and 44217 and 44227 in metric_ports):
        # another head on this machine may hold those.
        f"--ray-client-server-port={client_server}",
        f"--dashboard-agent-listen-port={agent}",
        f"--num-cpus={num_cpus}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    info = HeadInfo(
        address=f"{_url_host(binding.gcs_host)}:{port}",
        dashboard_url=f"http://{_url_host(binding.dashboard_host)}:{dashboard}",
        temp_dir=str(temp_dir),
    )
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


def _machine_address() -> str:
    """This machine's routable address, as Ray finds it for a node started without --node-ip-address."""
    import ray.util

    return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]


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


def listening_addresses(info: HeadInfo) -> list[str]:
    """Every TCP address a process of the head listens on (``host:port``, sorted): what ``serve`` really exposes."""
    psutil = psutil_module()
    found: set[str] = set()
    for proc in _processes(info):
        try:
            connections = proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        found.update(_socket_address(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN)
    return sorted(found)


def _socket_address(ip: str, port: int) -> str:
    """``host:port`` of a listening socket; an IPv4 address mapped into IPv6 is shown as IPv4 (pure)."""
    ip = ip.removeprefix("::ffff:") if "." in ip else ip
    return f"{_url_host(ip)}:{port}"


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
