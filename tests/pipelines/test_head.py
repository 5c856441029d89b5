"""The head ``expunge serve`` starts: it works where no Ray program ever ran, and keeps to loopback."""

import os
import subprocess
import sys
import time

import pytest

from expunge.pipelines._head import start_head, stop_head


@pytest.mark.integration
def test_a_head_starts_where_no_ray_token_exists_yet(tmp_path, monkeypatch):
    # A fresh machine: no ~/.ray/auth_token. `ray start` with token auth refused to start
    # (and `expunge serve` failed) until some other Ray program had created one.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    info = start_head(num_cpus=1)
    try:
        token = tmp_path / ".ray" / "auth_token"
        assert token.is_file()
        assert token.read_text().strip()
    finally:
        stop_head(info)


@pytest.mark.parametrize(
    ("host", "flags", "gcs", "dashboard"),
    [
        ("127.0.0.1", ["--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1"], "::ffff:127.0.0.1", "127.0.0.1"),
        ("localhost", ["--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1"], "::ffff:127.0.0.1", "127.0.0.1"),
        ("0.0.0.0", ["--node-ip-address=10.1.2.3", "--dashboard-host=0.0.0.0"], "10.1.2.3", "10.1.2.3"),
        ("10.9.8.7", ["--node-ip-address=10.9.8.7", "--dashboard-host=10.9.8.7"], "10.9.8.7", "10.9.8.7"),
    ],
)
def test_a_head_binds_where_its_host_says(host, flags, gcs, dashboard):
    from expunge.pipelines._head import _binding

    binding = _binding(host, node_ip="10.1.2.3")
    assert (binding.flags, binding.gcs_host, binding.dashboard_host) == (flags, gcs, dashboard)
    # Only a loopback head runs in Ray's single-machine mode (the only one where its node address stays loopback).
    assert ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" in binding.env) == (host in ("127.0.0.1", "localhost"))


def _settled_sockets(info) -> list[tuple[str, int, int]]:
    """The head's listening sockets once no new one appeared for 2 s (agents start after `ray start` returns)."""
    from expunge.pipelines._head import _processes
    from tests.cluster._proc import listening_sockets

    seen: list[tuple[str, int, int]] = []
    for _ in range(15):
        now = listening_sockets(p.pid for p in _processes(info))
        if now and {(a, port) for a, port, _ in now} == {(a, port) for a, port, _ in seen}:
            return now
        seen = now
        time.sleep(2)
    return seen


@pytest.fixture(scope="module")
def loopback_head():
    """One loopback head for this module's tests that only read it (a head takes about 10 s to start),
    started with a variable in the environment that it is told to withhold."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EXPUNGE_TEST_WITHHELD", "must-not-reach-the-head")
        info = start_head(num_cpus=1, withheld_env=("EXPUNGE_TEST_WITHHELD",))
    try:
        yield info
    finally:
        stop_head(info)


@pytest.mark.integration
def test_every_port_of_a_head_listens_on_loopback_and_no_process_holds_a_withheld_variable(loopback_head):
    # Issue 20: with `--node-ip-address=127.0.0.1` alone, Ray put the GCS, raylet, agents and the
    # Ray client server on the machine's network address (or on every interface).
    from expunge.pipelines._head import _processes, listening_addresses
    from tests.cluster._proc import environment, is_loopback

    info = loopback_head
    sockets = _settled_sockets(info)
    assert len(sockets) >= 5, sockets  # GCS, raylet, dashboard, its agent, the runtime-env agent, ...
    assert [s for s in sockets if not is_loopback(s[0])] == []
    reported = listening_addresses(info)  # what `serve` prints (workers come and go: not compared one to one)
    assert f"127.0.0.1:{info.address.rpartition(':')[2]}" in reported
    assert [a for a in reported if not is_loopback(a.rpartition(":")[0].strip("[]"))] == []
    leaked = [p.pid for p in _processes(info) if "EXPUNGE_TEST_WITHHELD" in environment(p.pid)]
    assert leaked == []
    # A plain client (no Ray setting of its own) joins at the address the head reports.
    joined = subprocess.run(
        [sys.executable, "-c", "import ray; ray.init(); print(ray.cluster_resources()['CPU'])"],
        env={**os.environ, "RAY_ADDRESS": info.address, "RAY_AUTH_MODE": "token"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert float(joined.stdout.split()[-1]) == 1.0


_JOIN = """
import sys
import ray
from expunge.orchestrator.client import join_cluster
join_cluster(sys.argv[1], "nobody-here")
print("joined" if ray.is_initialized() else "not joined", flush=True)
"""


@pytest.mark.integration
def test_a_loopback_head_is_reached_at_the_address_listening_shows(tmp_path, loopback_head):
    # Review: `serve` lists the head's GCS as 127.0.0.1:PORT under "listening", while its address reads
    # [::ffff:127.0.0.1]:PORT; given the first, `serve --status/--stop --address` made Ray retry the
    # machine's network address (where a loopback head does not listen) for a minute, then fail.
    from expunge.pipelines._head import client_address

    info = loopback_head
    port = info.address.rpartition(":")[2]
    assert client_address(f"127.0.0.1:{port}") == client_address(f"localhost:{port}") == info.address
    assert client_address(info.address) == info.address
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"EXPUNGE_STATE_DIR": str(tmp_path)}
    status = ["--status", "--namespace", "nobody-here", "--address", f"127.0.0.1:{port}"]
    asked = subprocess.run(
        [sys.executable, "-m", "expunge.pipelines.serve", *status],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # The cluster was joined: what is missing is the service, not the cluster.
    assert asked.returncode == 4, asked.stderr[-3000:]
    assert "no Expunge service 'expunge-coordinator' in Ray namespace 'nobody-here'" in asked.stderr
    # The SDK's own join (RayClient.connect, forget --service --address) takes the same address.
    joined = subprocess.run(
        [sys.executable, "-c", _JOIN, f"127.0.0.1:{port}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert joined.stdout.split()[-1] == "joined"


def test_other_addresses_are_left_as_they_are():
    from expunge.orchestrator.cluster import client_address

    for address in ("10.1.2.3:6379", "[::ffff:127.0.0.1]:6379", "auto", "ray://10.1.2.3:10001", "[::1]:6379"):
        assert client_address(address) == address
