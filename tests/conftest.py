"""Shared fixtures: a digest key, small generated data, one local Ray cluster per session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

from orchestrator.digests import SubjectHasher

TEST_KEY = b"lethe-test-key-0123456789abcdef"


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
