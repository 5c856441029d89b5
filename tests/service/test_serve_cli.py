"""`expunge serve` refuses bad input before starting anything (exit 2, one line saying how to fix it)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

EXPUNGE = str(Path(sys.executable).parent / "expunge")


def _serve(
    tmp_path: Path, *args: str, key: str | None = "00999b0ec2e75a4bbae64af43a84b30fe4af6a2dc2487f47c5c61e7d4eb0e0ea"
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "EXPUNGE_STATE_DIR": str(tmp_path / "state")}
    if key:
        env["EXPUNGE_SUBJECT_KEY"] = key
    return subprocess.run(
        [EXPUNGE, "serve", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("config_text", "message"),
    [
        ("service: {window_ms: -5}\n", "service.window_ms"),
        ("service: {unknown: 1}\n", "service.unknown"),
        ("storage: {uri: ./never-trained}\n", "never trained"),
    ],
)
def test_a_malformed_config_or_an_untrained_store_exits_2_and_starts_nothing(tmp_path, config_text, message):
    config = tmp_path / "job.yaml"
    config.write_text(config_text)
    done = _serve(tmp_path, "--config", str(config))
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert not (tmp_path / "state").exists()  # no head was started or recorded


def test_serve_needs_a_config_and_stopping_nothing_says_so(tmp_path):
    assert "--config" in _serve(tmp_path).stderr
    stopped = _serve(tmp_path, "--stop", "--namespace", "nothing-here")  # cleanup scripts may stop twice
    assert stopped.returncode == 0, stopped.stderr
    assert "nothing to stop" in stopped.stderr
    assert "WARNING" not in stopped.stderr  # an answer, not a fault: no log line without -v
    assert json.loads(stopped.stdout)["service_stopped"] is False


def test_stop_reads_the_namespace_from_the_config(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("service: {namespace: ns-from-config}\n")
    stopped = _serve(tmp_path, "--stop", "--config", str(config))
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["namespace"] == "ns-from-config"


def test_auto_and_client_addresses_are_left_to_ray_and_a_dead_port_is_not():
    from expunge.pipelines.serve import _reachable

    assert _reachable("auto")
    assert _reachable("ray://head:10001")
    assert not _reachable("127.0.0.1:1")


def test_forget_through_the_service_never_joins_a_cluster_it_was_not_pointed_at(tmp_path, monkeypatch, capsys):
    # Issue 18: with no RAY_ADDRESS and no record of `serve`, `forget --service` called ray.init("auto"),
    # which joins whatever cluster runs on this machine (another job's) and erases through what answers there.
    import ray

    from expunge.pipelines.cli import main

    joined: list[object] = []

    def init(*args: object, **kwargs: object) -> None:
        joined.append(kwargs.get("address", args[0] if args else None))
        raise ConnectionError("the test refuses every cluster")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("EXPUNGE_STATE_DIR", str(tmp_path / "state"))  # no `serve` recorded here
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(SystemExit) as ended:
        main(["forget", "--service", "--subject", "user-7"])

    assert ended.value.code == 4  # the service cannot be reached: retryable, not a bug
    assert joined == []
    message = capsys.readouterr().err
    assert "--address" in message
    assert "RAY_ADDRESS" in message
    assert "expunge serve" in message


def test_forget_through_the_service_uses_the_address_it_was_given(tmp_path, monkeypatch, capsys):
    import ray

    from expunge.pipelines.cli import main

    joined: list[object] = []

    def init(*args: object, **kwargs: object) -> None:
        joined.append(kwargs.get("address"))
        raise ConnectionError("nobody there")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("EXPUNGE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr("expunge.orchestrator.client.gcs_answers", lambda address, timeout_s=2.0: True)
    with pytest.raises(SystemExit) as ended:
        main(["forget", "--service", "--subject", "user-7", "--address", "10.1.2.3:6390"])

    assert ended.value.code == 4
    assert joined == ["10.1.2.3:6390"]  # (a loopback address is joined at Ray's spelling of it: test_head)


def test_status_without_a_running_service_exits_4_and_says_how_to_start_one(tmp_path):
    done = _serve(tmp_path, "--status", "--namespace", "nothing-here")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "expunge serve --config" in done.stderr


_HOLD = """
import sys, time
from expunge.orchestrator.lease import StoreLease
from expunge.shards.store import ObjectStore
StoreLease(ObjectStore(sys.argv[1])).acquire("expunge forget")
print("held", flush=True)
time.sleep(120)
"""


def test_serve_on_a_store_another_process_writes_is_refused_before_a_head_starts(tmp_path):
    from expunge.orchestrator.config import JobConfig, StorageConfig, SyntheticRatingsConfig, TrackingConfig
    from expunge.orchestrator.coordinator import Coordinator, local_pool
    from expunge.orchestrator.digests import SubjectHasher
    from expunge.pipelines.datasets import synthetic_ratings
    from tests.engine import job

    key = "00999b0ec2e75a4bbae64af43a84b30fe4af6a2dc2487f47c5c61e7d4eb0e0ea"
    store = str(tmp_path / "store")
    config: JobConfig = job(shards=2, slices=2).model_copy(
        update={"storage": StorageConfig(uri=store), "tracking": TrackingConfig(enabled=False)}
    )
    rows = synthetic_ratings(SyntheticRatingsConfig(users=20, items=10, ratings_per_user=4, seed=1))
    Coordinator(store, SubjectHasher(key.encode()), pool_factory=local_pool).train(rows, config)
    (tmp_path / "job.yaml").write_text(f"storage: {{uri: {store}}}\ntracking: {{enabled: false}}\n")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, store], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        done = _serve(tmp_path, "--config", str(tmp_path / "job.yaml"), key=key)
        assert done.returncode == 4, done.stdout + done.stderr
        assert f"being written by expunge forget on host {socket.gethostname()}, pid {holder.pid}" in done.stderr
        assert not (tmp_path / "state" / "serve-expunge.json").exists()  # no head was started
    finally:
        holder.kill()
        holder.wait()


def test_stop_with_another_address_leaves_the_head_serve_started_running(tmp_path, monkeypatch, capsys):
    # New-user review: `serve --stop --address WRONG` said "nothing to stop there" and exit 0, and
    # killed the head `serve` had started (with the service on it) all the same.
    from expunge.pipelines import serve

    monkeypatch.setenv("EXPUNGE_STATE_DIR", str(tmp_path / "state"))
    head = {"address": "[::ffff:127.0.0.1]:6390", "dashboard_url": "http://127.0.0.1:8265", "temp_dir": "/tmp/x"}
    serve.state_file("ns-a").parent.mkdir(parents=True)
    serve.state_file("ns-a").write_text(json.dumps({"address": head["address"], "head": head}))
    killed: list[object] = []
    monkeypatch.setattr(serve, "stop_head", lambda info: killed.append(info) or 7)
    monkeypatch.setattr(serve, "_reachable", lambda address: False)
    import ray

    monkeypatch.setattr(ray, "shutdown", lambda: None)  # the session's own cluster stays up for later tests

    answer = serve.stop("ns-a", "127.0.0.1:8470", None)  # the HTTP API's port, say
    assert answer["head_processes_stopped"] == 0
    assert killed == []
    assert serve.state_file("ns-a").exists()
    assert "is left running" in capsys.readouterr().err

    answer = serve.stop("ns-a", "127.0.0.1:6390", None)  # the recorded head, spelled as `serve` prints it
    assert answer["head_processes_stopped"] == 7
    assert not serve.state_file("ns-a").exists()
