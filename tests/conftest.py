"""Shared fixtures: a digest key, one local Ray cluster and one S3 API server per session."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
# The test cluster's authentication mode, set explicitly as Expunge's own local clusters do
# (before ray is imported, so Ray reads it), which keeps Ray's start-up banner away.
os.environ.setdefault("RAY_AUTH_MODE", "token")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The S3 test server's address and dummy credentials are fixed before anything starts, so
# Ray workers (which inherit the environment at ray.init) reach the same server.
S3_PORT = _free_port()
S3_ENDPOINT = f"http://127.0.0.1:{S3_PORT}"
os.environ.setdefault("AWS_ACCESS_KEY_ID", "expunge-test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "expunge-test-secret")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["AWS_ENDPOINT_URL_S3"] = S3_ENDPOINT

from hypothesis import settings  # noqa: E402

from expunge.orchestrator.digests import SubjectHasher  # noqa: E402

# No per-example time limit: a wall-clock threshold fails on a loaded 2-core CI machine, not on a bug.
settings.register_profile("expunge", deadline=None)
settings.load_profile("expunge")

TEST_KEY = b"expunge-test-key-0123456789abcdef"


@pytest.fixture
def hasher() -> SubjectHasher:
    return SubjectHasher(TEST_KEY)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A real local Ray cluster, started once (ray.init costs seconds)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on loopback (a real HTTP S3 API); yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield S3_ENDPOINT
    server.stop()


def _bucket(endpoint: str, versioned: bool) -> str:
    import boto3
    import s3fs

    name = f"expunge-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=name)
    if versioned:
        client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    s3fs.S3FileSystem.clear_instance_cache()
    return name


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A fresh unversioned bucket on the test S3 server."""
    return _bucket(s3_server, versioned=False)


@pytest.fixture
def s3_versioned_bucket(s3_server: str) -> str:
    """A fresh bucket with object versioning enabled."""
    return _bucket(s3_server, versioned=True)
