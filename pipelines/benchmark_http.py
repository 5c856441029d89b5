"""Recipe: the HTTP API under concurrent load, and what an HTTP hop costs beside a Ray actor call.

    expunge benchmark service --http --clients 50 --requests 200

A synthetic store (``--subjects`` people, S x R shards, MLflow on, a SQLite registry in a
scratch folder) is served by the service in this Ray cluster with its HTTP API on a free
loopback port. ``--clients`` threads, each with its own light ``expunge.Client`` and one
submit-and-read token, share ``--requests`` one-subject erasures: each submits (POST, 202),
then polls until the request is done. Per stage, p50/p95/p99 in seconds: *accepted* (the POST
round trip), *committed* and *done* (the service's own timestamps, from receipt), and the
client's wall time until it saw *done*. Then ``--probes`` status reads of one request through
HTTP and through a Ray actor call (``RayClient.status``), side by side: the HTTP front door runs
in the service's process, so an HTTP status read is one hop, as the Ray call is; a Ray Serve
deployment would add a second hop (proxy to replica to the single-writer service actor).
Timings are wall-clock on whatever machine runs it; compare figures within one run.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import platform
import queue
import secrets
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from expunge.client import Client
from expunge.client.models import Erasure
from expunge.orchestrator.api.tokens import TokenStore
from expunge.orchestrator.client import RayClient
from expunge.orchestrator.config import (
    JobConfig,
    PrivacyConfig,
    ServiceConfig,
    ShardingConfig,
    StorageConfig,
    SyntheticRatingsConfig,
    TrackingConfig,
    TrainingConfig,
)
from expunge.orchestrator.coordinator import Coordinator, ray_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.service.actor import start_service, stop_service
from expunge.pipelines._runtime import init_ray, progress
from expunge.pipelines.benchmark_service import Percentiles, percentiles
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from expunge.shards.store import ObjectStore

__all__ = ["HttpBenchmark", "HttpSettings", "print_http", "run_http"]


class HttpSettings(BaseModel):
    """What to measure."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    shards: int = Field(4, ge=1)
    slices: int = Field(4, ge=1)
    subjects: int = Field(2000, ge=2)
    requests: int = Field(200, ge=1)
    clients: int = Field(50, ge=1)
    probes: int = Field(200, ge=1)
    window_ms: float = Field(ServiceConfig.model_fields["window_ms"].default, ge=0.0)
    seed: int = 0


class HttpBenchmark(BaseModel):
    settings: HttpSettings
    cpus: int
    platform: str
    load_average: tuple[float, float, float]
    url: str
    completed: int
    failed: int
    elapsed_seconds: float
    throughput_per_s: float
    stages: dict[str, Percentiles]
    status_http: Percentiles
    status_ray: Percentiles
    http_over_ray: float


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _seconds(earlier: str, later: str | None) -> float | None:
    return None if later is None else (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def _timed(call: Callable[[], object], probes: int) -> list[float]:
    out = []
    for _ in range(probes):
        began = time.perf_counter()
        call()
        out.append(time.perf_counter() - began)
    return out


def run_http(settings: HttpSettings, training: TrainingConfig) -> HttpBenchmark:
    """Serve a synthetic store over HTTP in this Ray cluster and load it from ``settings.clients`` clients.

    Raises:
        ValueError: more requests than subjects.
        ExpungeError: the service did not start (the error says why).
    """
    if settings.requests > settings.subjects:
        raise ValueError(f"--requests {settings.requests} > --subjects {settings.subjects}: one subject per request")
    init_ray()
    key = secrets.token_hex(32)
    hasher = SubjectHasher(key.encode())
    rows = synthetic_ratings(
        SyntheticRatingsConfig(users=settings.subjects, items=200, ratings_per_user=10, seed=settings.seed)
    )
    subjects = sorted(set(rows.column(SUBJECT_ID).to_pylist()))
    order = np.random.default_rng(settings.seed).permutation(len(subjects))[: settings.requests]
    with tempfile.TemporaryDirectory(prefix="expunge-bench-http-") as scratch:
        root = Path(scratch)
        key_file = root / "subject.key"
        key_file.touch(mode=0o600)
        key_file.write_text(key)
        job = JobConfig(
            sharding=ShardingConfig(shards=settings.shards, slices=settings.slices),
            training=training,
            storage=StorageConfig(uri=str(root / "store")),
            tracking=TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="http-load"),
            privacy=PrivacyConfig(subject_key_file=str(key_file)),
            service=ServiceConfig(
                namespace=f"bench-http-{uuid.uuid4().hex[:10]}", window_ms=settings.window_ms, port=_free_port()
            ),
        )
        with progress(f"training the S={settings.shards}, R={settings.slices} store on {rows.num_rows} rows"):
            coordinator = Coordinator(job.storage, hasher, Lineage(job.tracking, job.storage), ray_pool)
            try:
                coordinator.train(rows, job)
            finally:
                coordinator.close()
        _, token = TokenStore(ObjectStore(job.storage)).create("benchmark", ["erasure:submit", "erasure:read"])
        with progress(f"starting the service with its HTTP API (namespace {job.service.namespace})"):
            import ray

            handle, _ = start_service(job)
            url = str(ray.get(handle.ready.remote())["url"])
        try:
            work: queue.SimpleQueue[str] = queue.SimpleQueue()
            for index in order:
                work.put(subjects[int(index)])
            accepted: list[float] = []
            seen_done: list[float] = []
            finals: list[Erasure] = []
            lock = threading.Lock()

            def client_loop(_: int) -> None:
                with Client(url, token, timeout=120, retry_s=120) as client:
                    while True:
                        try:
                            subject = work.get_nowait()
                        except queue.Empty:
                            return
                        began = time.perf_counter()
                        answer = client.submit([subject])
                        posted = time.perf_counter() - began
                        final = client.wait(answer.request_id, "done", timeout=1800, poll_s=0.5)
                        with lock:
                            accepted.append(posted)
                            seen_done.append(time.perf_counter() - began)
                            finals.append(final)

            began = time.perf_counter()
            what = f"{settings.requests} erasures from {settings.clients} HTTP clients, each polled until done"
            with progress(what), concurrent.futures.ThreadPoolExecutor(settings.clients) as pool:
                list(pool.map(client_loop, range(settings.clients)))
            elapsed = time.perf_counter() - began
            committed = [d for f in finals if (d := _seconds(f.received_at, f.committed_at)) is not None]
            done = [d for f in finals if (d := _seconds(f.received_at, f.done_at)) is not None]
            probe_id = finals[0].request_id
            with progress(f"{settings.probes} status reads through HTTP and through a Ray actor call"):
                with Client(url, token) as client:
                    client.status(probe_id)
                    over_http = _timed(lambda: client.status(probe_id), settings.probes)
                ray_client = RayClient.connect(namespace=job.service.namespace, name=job.service.name)
                ray_client.status(probe_id)
                over_ray = _timed(lambda: ray_client.status(probe_id), settings.probes)
        finally:
            stop_service(job.service.namespace, job.service.name)
    http_tail, ray_tail = percentiles(over_http), percentiles(over_ray)
    return HttpBenchmark(
        settings=settings,
        cpus=os.cpu_count() or 1,
        platform=platform.platform(),
        load_average=os.getloadavg(),
        url=url,
        completed=sum(f.state == "done" for f in finals),
        failed=sum(f.stage == "failed" for f in finals),
        elapsed_seconds=elapsed,
        throughput_per_s=len(finals) / elapsed if elapsed > 0 else 0.0,
        stages={
            "accepted": percentiles(accepted),
            "committed": percentiles(committed),
            "done": percentiles(done),
            "client_saw_done": percentiles(seen_done),
        },
        status_http=http_tail,
        status_ray=ray_tail,
        http_over_ray=http_tail.p50 / ray_tail.p50 if ray_tail.p50 > 0 else 0.0,
    )


def print_http(result: HttpBenchmark, output: Path) -> None:
    """The stage table and the hop comparison on the console; the JSON to ``output``."""
    console = Console()
    table = Table(title=f"HTTP API: {result.settings.requests} erasures from {result.settings.clients} clients")
    for column in ("stage", "n", "p50 s", "p95 s", "p99 s", "max s"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    for stage, values in result.stages.items():
        table.add_row(stage, str(values.n), *(f"{v:.3f}" for v in (values.p50, values.p95, values.p99, values.max)))
    for name, values in (("status via HTTP", result.status_http), ("status via Ray call", result.status_ray)):
        table.add_row(name, str(values.n), *(f"{v:.4f}" for v in (values.p50, values.p95, values.p99, values.max)))
    console.print(table)
    console.print(
        f"done {result.completed}/{result.settings.requests}, failed {result.failed}, "
        f"{result.throughput_per_s:.1f} requests/s; HTTP status read p50 = {result.http_over_ray:.2f} x the Ray "
        f"actor call's; {result.cpus} CPUs, load average {result.load_average[0]:.1f}"
    )
    output.write_text(json.dumps(result.model_dump(mode="json"), indent=1))
    Console(stderr=True).print(f"results written to {output}")
