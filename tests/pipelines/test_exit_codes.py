"""Typed exits for every job: a missing file is bad input (2), unreachable infrastructure is retryable (4).

Exit 5 means a bug in Expunge; none of these is one (issue 18, "Typed exits everywhere"). The jobs
run in this process through the ``expunge`` program's own entry point, so the table stays quick.
"""

from __future__ import annotations

import http.server
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from expunge.pipelines.cli import main

ROOT = Path(__file__).resolve().parents[2]
KEY = "3f9c2b7e1d8a4f6052c7e9b1a3d5f7082e4c6a8b0d2f4e6a8c0e2a4c6e8a0c2e"
S3_STORE = "s3://expunge-unreachable/store"
JOB = (
    "data: {source: synthetic, synthetic: {users: 12, items: 6, ratings_per_user: 2}}\n"
    "sharding: {shards: 1, slices: 1}\n"
    "training: {epochs: 1, cpus_per_shard: 0.5}\n"
    "storage: {uri: ./store}\n"
    "tracking: {enabled: false}\n"
)

#: Every job, each with a file that does not exist.
MISSING_FILE = {
    "train": ["train", "--config", "nowhere.yaml"],
    "train (data)": ["train", "--config", "missing-data.yaml"],
    "forget": ["forget", "--config", "nowhere.yaml", "--subject", "user-1"],
    "forget (subjects file)": ["forget", "--storage", "./store", "--subjects-file", "nowhere.txt"],
    "readmit": ["readmit", "--config", "nowhere.yaml", "--subject", "user-1", "--reason", "consent ticket 1"],
    "verify": ["verify", "--config", "nowhere.yaml", "--request", "r-1"],
    "verify (workdir)": ["verify", "--workdir", "nowhere", "--request", "r-1"],
    "scan": ["scan", "--config", "nowhere.yaml", "--subject", "user-1"],
    "serve": ["serve", "--config", "nowhere.yaml"],
    "recommend": ["recommend", "--config", "nowhere.yaml", "--subject", "user-1"],
    "digest": ["digest", "--config", "nowhere.yaml", "--subject", "user-1"],
    "benchmark": ["benchmark", "--data", "nowhere.inter"],
    "benchmark accuracy": ["benchmark", "accuracy", "--data", "nowhere.inter"],
}

#: Every job that reads a store, pointed at an S3 endpoint where nothing listens.
UNREACHABLE_S3 = {
    "train": ["train", "--config", "job.yaml", "--storage", S3_STORE],
    "forget": ["forget", "--storage", S3_STORE, "--subject", "user-1"],
    "readmit": ["readmit", "--storage", S3_STORE, "--subject", "user-1", "--reason", "consent ticket 1"],
    "verify": ["verify", "--storage", S3_STORE, "--request", "r-1"],
    "scan": ["scan", "--storage", S3_STORE, "--subject", "user-1"],
    "serve": ["serve", "--config", "job.yaml", "--storage", S3_STORE],
    "recommend": ["recommend", "--storage", S3_STORE, "--subject", "user-1"],
    "digest": ["digest", "--storage", S3_STORE, "--subject", "user-1"],
}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # The jobs set logger levels for their process (the benchmarks quieten expunge.orchestrator):
    # put every level back for the tests that run after these in this process.
    levels = {
        name: logger.level
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    (tmp_path / "job.yaml").write_text(JOB)
    (tmp_path / "missing-data.yaml").write_text(JOB.replace("{source: synthetic,", "{source: parquet, path: gone/,"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXPUNGE_SUBJECT_KEY", KEY)
    monkeypatch.setenv("EXPUNGE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield tmp_path
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            logger.setLevel(levels.get(name, logging.NOTSET))


def _exit_code(args: list[str]) -> int:
    with pytest.raises(SystemExit) as ended:
        main(args)
    return int(ended.value.code or 0)


@pytest.mark.parametrize("job", sorted(MISSING_FILE))
def test_a_missing_file_is_bad_input(job, workdir, capsys):
    assert _exit_code(MISSING_FILE[job]) == 2
    stderr = capsys.readouterr().err
    assert "nowhere" in stderr or "gone" in stderr
    assert "Traceback" not in stderr
    assert not (workdir / "nowhere").exists()  # bad input changes nothing: not even an empty report folder


def test_a_missing_store_is_said_before_a_missing_key(workdir, monkeypatch, capsys):
    # Told first that the key is missing, a new user would make a new key for an existing store.
    monkeypatch.delenv("EXPUNGE_SUBJECT_KEY")
    assert _exit_code(["verify", "--storage", str(workdir / "no-store"), "--request", "r-1"]) == 2
    stderr = capsys.readouterr().err
    assert "no published ensemble" in stderr
    assert "EXPUNGE_SUBJECT_KEY" not in stderr


@pytest.mark.parametrize("job", sorted(UNREACHABLE_S3))
def test_an_unreachable_s3_endpoint_is_retryable(job, workdir, monkeypatch, capsys):
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{_closed_port()}")
    # One quick attempt per call: the refusal must come in seconds, not after minutes of retries.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        assert _exit_code(UNREACHABLE_S3[job]) == 4
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    stderr = capsys.readouterr().err
    assert "expunge-unreachable" in stderr
    assert "Traceback" not in stderr
    assert not (workdir / "state").exists()  # serve started no Ray head


def _train_in_a_fresh_process(folder: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``expunge train --config job.yaml`` as the program runs it, in ``folder``, with ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "expunge.pipelines.cli", "train", "--config", "job.yaml"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_ray_that_cannot_start_is_retryable_not_a_bug(tmp_path):
    # Issue 18: Ray failing to start within its timeout exited 5 ("a bug"). Here its GCS port is
    # taken, and Ray's own waits are cut to a few seconds.
    (tmp_path / "job.yaml").write_text(JOB)
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "EXPUNGE_SUBJECT_KEY": KEY,
                "RAY_GCS_SERVER_PORT": str(taken.getsockname()[1]),
                "RAY_gcs_server_port_wait_time_s": "1",
                "RAY_py_gcs_connect_timeout_s": "2",
                "RAY_gcs_rpc_server_connect_timeout_s": "1",
            }
        )
        done = _train_in_a_fresh_process(tmp_path, env, timeout=240)
    assert done.returncode == 4, done.stderr[-3000:]
    assert "starting Ray on this machine failed" in done.stderr
    assert "internal error" not in done.stderr
    assert not (tmp_path / "store").exists()  # nothing was written


def test_a_ray_address_nobody_answers_is_retryable_at_once(tmp_path):
    # Adversarial review: RAY_ADDRESS naming a dead cluster made ray.init retry for many minutes,
    # printing a warning a second, before the job could exit 4.
    (tmp_path / "job.yaml").write_text(JOB)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: nothing answers there
        env = {**os.environ, "PYTHONPATH": str(ROOT), "EXPUNGE_SUBJECT_KEY": KEY, "RAY_ADDRESS": f"127.0.0.1:{port}"}
        done = _train_in_a_fresh_process(tmp_path, env, timeout=120)
    assert done.returncode == 4, done.stderr[-3000:]
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in done.stderr
    assert not (tmp_path / "store").exists()


def test_a_ray_address_where_another_server_listens_is_retryable_at_once(tmp_path):
    # RAY_ADDRESS naming a port where an HTTP server listens (the service's API port, say) passed the
    # connect-only probe, and ray.init retried it for minutes.
    (tmp_path / "job.yaml").write_text(JOB)
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "EXPUNGE_SUBJECT_KEY": KEY, "RAY_ADDRESS": f"127.0.0.1:{port}"}
        done = _train_in_a_fresh_process(tmp_path, env, timeout=120)
    finally:
        server.shutdown()
    assert done.returncode == 4, done.stderr[-3000:]
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in done.stderr
    assert "not a Ray head's GCS" in done.stderr
    assert not (tmp_path / "store").exists()


def test_a_scan_for_two_subjects_is_refused_not_half_done(workdir, capsys):
    # Adversarial review: a second --subject replaced the first, so a scan could say "clean" of a
    # subject it never looked for.
    assert _exit_code(["scan", "--storage", str(workdir / "store"), "--subject", "u1", "--subject", "u2"]) == 2
    assert "a scan looks for one subject" in capsys.readouterr().err


def test_an_http_url_given_as_the_ray_address_is_bad_input(tmp_path):
    # New-user review: pasting the service's URL as RAY_ADDRESS or --address ended in a traceback, exit 5.
    (tmp_path / "job.yaml").write_text(JOB)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EXPUNGE_SUBJECT_KEY": KEY, "RAY_ADDRESS": "http://127.0.0.1:8470"}
    done = _train_in_a_fresh_process(tmp_path, env, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "is an HTTP URL" in done.stderr
    assert "internal error" not in done.stderr


def test_a_loopback_ray_address_is_joined_as_ray_reaches_it(monkeypatch):
    # New-user review: RAY_ADDRESS=127.0.0.1:PORT of a head `expunge serve` started on loopback hung a
    # job: Ray rewrites 127.0.0.1 to the machine's address, where that head does not listen.
    import ray

    from expunge.pipelines import _runtime

    joined: list[str] = []
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6390")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(_runtime, "client_address", lambda address: "[::ffff:127.0.0.1]:6390")
    monkeypatch.setattr(_runtime, "gcs_answers", lambda address: address == "[::ffff:127.0.0.1]:6390")
    monkeypatch.setattr(ray, "init", lambda address=None, **kwargs: joined.append(address))
    _runtime.init_ray()
    assert joined == ["[::ffff:127.0.0.1]:6390"]
