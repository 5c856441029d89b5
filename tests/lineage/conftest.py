"""One real ``mlflow server`` per test session: sqlite backend, artifacts proxied to a versioned S3 test bucket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class MlflowServer:
    uri: str  # http://127.0.0.1:<port>
    backend_store_uri: str  # the server's sqlite database (what `mlflow gc` needs)
    bucket: str  # S3 bucket that holds the proxied artifacts
    root: Path  # scratch folder of the server (database, log)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, s3_server: str) -> Iterator[MlflowServer]:
    """Starts in ~20 s; stopped (only this process group) at session end."""
    import boto3

    root = tmp_path_factory.mktemp("mlflow-server")
    bucket = f"expunge-mlflow-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket=bucket)
    # Versioned, as production buckets often are: purging must delete every object version.
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    port = _free_port()
    backend = f"sqlite:///{root / 'server.db'}"
    log_path = root / "server.log"
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_server, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend),
                *("--artifacts-destination", f"s3://{bucket}/artifacts", "--workers", "1"),
                *("--host", "127.0.0.1", "--port", str(port)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: we stop exactly what we started
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _healthy(uri):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"mlflow server did not answer {uri}/health (exit {process.poll()}):\n{tail}")
            time.sleep(0.5)
        yield MlflowServer(uri=uri, backend_store_uri=backend, bucket=bucket, root=root)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
