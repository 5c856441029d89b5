"""A real erasure service (local shards, no Ray) behind the real HTTP API on a loopback port."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from expunge.orchestrator.api.server import HttpServer
from expunge.orchestrator.config import JobConfig, ServiceConfig, StorageConfig, SyntheticRatingsConfig, TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.service.core import ErasureService
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from tests.engine import job

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=30, items=15, ratings_per_user=5, seed=7))
SUBJECTS = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))


@dataclass
class Served:
    service: ErasureService
    server: HttpServer
    url: str
    store: Path
    hasher: SubjectHasher

    def token(self, *scopes: str, name: str = "client") -> str:
        return self.server.tokens.create(name, scopes)[1]

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@contextlib.contextmanager
def serving(root: Path, **service: object) -> Iterator[Served]:
    """Train a small store under ``root`` (once) and serve it over HTTP on 127.0.0.1 (a free port)."""
    hasher = SubjectHasher(b"http-api-test-key-0123456789abcdef")
    config: JobConfig = job(shards=3, slices=2).model_copy(
        update={
            "storage": StorageConfig(uri=str(root / "store")),
            "tracking": TrackingConfig(enabled=False),
            "service": ServiceConfig(port=0, token_cache_s=0.0, **service),  # type: ignore[arg-type]
        }
    )
    if Coordinator(config.storage, hasher).manifest is None:
        Coordinator(config.storage, hasher, None, pool_factory=local_pool).train(ROWS, config)
    erasure = ErasureService(config, hasher, None, pool_factory=local_pool)
    server = HttpServer(erasure, config.service)
    try:
        url = server.start()
        yield Served(erasure, server, url, root / "store", hasher)
    finally:
        server.stop()
        erasure.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("api"), window_ms=0) as running:
        yield running
