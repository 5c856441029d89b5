"""Recipe: the erasure service's latency and load, measured in one run (issue 9, item 7).

    expunge benchmark service --data ../shared/data/ml-100k/ml-100k.inter
    python -m expunge.pipelines.benchmark_service ...   (the same, as ``ray job submit`` runs it)

**Latency** (MovieLens, the 80 % training split of ``expunge.pipelines.datasets.split_rows``, S x R
shards, the benchmarks' MF settings with compute parity): the monolith (S=1, R=1) is trained
and retrained without one subject first (``expunge.pipelines.benchmark.measure_monolith``). Then a
SISA store is trained with MLflow on (a SQLite registry in the scratch folder), the cold CLI
(``expunge forget --storage URI --subject ID``, a fresh process that starts its own Ray) erases
a few subjects, and only then the service starts in this Ray cluster (``start_service``, its own
namespace). Through the SDK, ``--requests`` one-subject erasures run one after another: the
client-side wall time until ``forget`` returns (*committed*) and until ``wait(...,
"registered")`` returns (*registered*), and the receipt's ``retrain_seconds`` (the retrain work
itself). Checks: committed p50 <= 1.5 x retrain p50 + 0.3 s; registered p50 < 5 s.

**Load** (synthetic ratings of ``--load-subjects`` subjects, same S x R): a second service, then
``--load-requests`` single-subject requests, one per subject, submitted from ``--threads``
threads as fast as ``RayClient.submit`` allows; every request is waited for until
committed, then until registered. Per-request latencies come from the service's own
timestamps (``committed_at - received_at``). The coordinator's peak RSS is sampled at the
start, in the middle and at the end. The run fails (exit 1) unless every request registered.

Timings are wall-clock on whatever machine runs it (its CPU count and load average are
recorded): compare figures within one run.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import os
import platform
import resource
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import typer
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from expunge import RayClient
from expunge.orchestrator.config import (
    ItemStatsConfig,
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
from expunge.orchestrator.errors import ConfigError, ExpungeError
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.service.actor import start_service, stop_service
from expunge.pipelines._runtime import exit_on_error, init_logging, init_ray, progress, writable_output
from expunge.pipelines.benchmark import measure_monolith, parity_training
from expunge.pipelines.datasets import load_movielens, split_rows, synthetic_ratings
from expunge.shards.rows import SUBJECT_ID

if TYPE_CHECKING:
    from expunge.pipelines.benchmark_stream import StreamResult, StreamSettings

__all__ = [
    "Check",
    "LatencyResult",
    "LoadResult",
    "Percentiles",
    "ServiceBenchmark",
    "ServiceBenchmarkSettings",
    "latency_checks",
    "main",
    "percentiles",
    "run",
    "run_stream_benchmark",
]

log = logging.getLogger(__name__)

#: How long one wait for a request may take before the benchmark gives up on it, in seconds.
_WAIT_S = 3600.0
#: ``service.window_ms`` unless told: the job config's default.
_DEFAULT_WINDOW_MS: float = ServiceConfig.model_fields["window_ms"].default
#: How often the coordinator's memory is sampled during the load, in seconds.
_SAMPLE_EVERY_S = 1.0


class ServiceBenchmarkSettings(BaseModel):
    """What to measure. ``requests``/``cold``: latency erasures through the SDK / the cold CLI."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    shards: int = Field(8, ge=1)
    slices: int = Field(8, ge=1)
    requests: int = Field(20, ge=1)
    cold: int = Field(2, ge=0)
    load_subjects: int = Field(10_000, ge=2)
    load_requests: int = Field(10_000, ge=1)
    load_items: int = Field(500, ge=2)
    load_ratings_per_user: int = Field(10, ge=1)
    threads: int = Field(16, ge=1)
    #: ``service.window_ms`` of both services (the job config's default unless told).
    window_ms: float = Field(_DEFAULT_WINDOW_MS, ge=0.0)
    seed: int = 0


class Percentiles(BaseModel):
    """p50, p95, p99 and max of ``n`` samples, in seconds (0.0 for no samples)."""

    n: int
    p50: float
    p95: float
    p99: float = 0.0
    max: float


def percentiles(values: Sequence[float]) -> Percentiles:
    """Pure: p50/p95/p99 (linear interpolation, as ``numpy.percentile``) and max of ``values``."""
    if not values:
        return Percentiles(n=0, p50=0.0, p95=0.0, p99=0.0, max=0.0)
    array = np.asarray(values, dtype=float)
    p50, p95, p99 = (float(np.percentile(array, q)) for q in (50, 95, 99))
    return Percentiles(n=len(values), p50=p50, p95=p95, p99=p99, max=float(array.max()))


class Check(BaseModel):
    """One target of the issue: ``measured`` against ``limit`` (seconds); ``passed`` when within it."""

    name: str
    measured: float
    limit: float
    passed: bool


def latency_checks(committed_p50: float, registered_p50: float, retrain_p50: float) -> list[Check]:
    """Pure: committed p50 <= 1.5 x retrain-work p50 + 0.3 s; registered p50 < 5 s."""
    committed_limit = 1.5 * retrain_p50 + 0.3
    return [
        Check(
            name="committed p50 <= 1.5 x retrain p50 + 0.3 s",
            measured=committed_p50,
            limit=committed_limit,
            passed=committed_p50 <= committed_limit,
        ),
        Check(name="registered p50 < 5 s", measured=registered_p50, limit=5.0, passed=registered_p50 < 5.0),
    ]


class LatencyResult(BaseModel):
    """One-subject erasures against the warm service, next to the cold CLI and the monolith (seconds)."""

    rows: int
    subjects: int
    service_start_seconds: float
    committed: Percentiles
    registered: Percentiles
    retrain: Percentiles
    committed_seconds: list[float]
    registered_seconds: list[float]
    retrain_seconds: list[float]
    #: Wall time of each ``expunge forget --storage URI --subject ID`` process, and its receipt's retrain.
    cold_cli_seconds: list[float]
    cold_cli_retrain_seconds: list[float]
    #: The monolith (S=1, R=1) on the same rows: its whole ``train``, its training phase, and its
    #: erasure's retrain (a full retrain without the subject) and whole erasure.
    monolith_train_seconds: float
    monolith_retrain_seconds: float
    monolith_erasure_seconds: float
    checks: list[Check]


class MemorySample(BaseModel):
    """The coordinator's peak RSS (bytes, since it started) at a point of the load run."""

    at: str
    seconds: float
    queued: int
    committed: int
    coordinator_peak_rss_bytes: int


class LoadResult(BaseModel):
    """Many single-subject requests as fast as the SDK submits them (seconds, bytes)."""

    subjects: int
    requests: int
    threads: int
    submit_seconds: float
    last_commit_seconds: float
    last_registration_seconds: float
    throughput_per_s: float
    batches: int
    shard_retrains: int
    registrations: int
    stages: dict[str, int]
    committed: Percentiles
    registered: Percentiles
    memory: list[MemorySample]
    driver_peak_rss_bytes: int
    complete: bool


class MachineInfo(BaseModel):
    cpus: int
    platform: str
    load_average_start: tuple[float, float, float]
    load_average_end: tuple[float, float, float] = (0.0, 0.0, 0.0)


class ServiceBenchmark(BaseModel):
    settings: ServiceBenchmarkSettings
    training: TrainingConfig
    machine: MachineInfo
    latency: LatencyResult | None
    load: LoadResult


# ----- set-up ------------------------------------------------------------------------------------
#: The run's digest key, in its scratch folder (mkdtemp's: 0700).
_KEY_FILE = "subject.key"


def _job(
    store: Path, tracking: TrackingConfig, settings: ServiceBenchmarkSettings, training: TrainingConfig
) -> JobConfig:
    return JobConfig(
        sharding=ShardingConfig(shards=settings.shards, slices=settings.slices),
        training=training,
        storage=StorageConfig(uri=str(store)),
        tracking=tracking,
        # The service reads the run's key from the file `run` writes in the scratch folder (above the
        # store's folder): the key is never passed through Ray.
        privacy=PrivacyConfig(subject_key_file=str(store.parent.parent / _KEY_FILE)),
        service=ServiceConfig(namespace=f"bench-{uuid.uuid4().hex[:12]}", window_ms=settings.window_ms),
    )


def _train_store(rows: pa.Table, job: JobConfig, hasher: SubjectHasher) -> None:
    # MLflow on, so that the service's "registered" stage does the real work; the store records
    # this registry, so the cold CLI (given only --storage) finds it too.
    what = f"training the S={job.sharding.shards}, R={job.sharding.slices} store on {rows.num_rows} rows (MLflow on)"
    with progress(what):
        coordinator = Coordinator(job.storage, hasher, Lineage(job.tracking, job.storage), ray_pool)
        try:
            coordinator.train(rows, job)
        finally:
            coordinator.close()  # the service starts its own shard actors


@contextmanager
def _serving(job: JobConfig) -> Iterator[tuple[RayClient, float]]:
    """The service for ``job`` in this Ray cluster; yields (client, seconds it took to start warm)."""
    began = time.perf_counter()
    with progress(f"starting the service (namespace {job.service.namespace}) and its shard actors"):
        start_service(job)
    started = time.perf_counter() - began
    try:
        yield RayClient.connect(namespace=job.service.namespace, name=job.service.name), started
    finally:
        stop_service(job.service.namespace, job.service.name)


def _subjects(rows: pa.Table) -> list[str]:
    return sorted(set(rows.column(SUBJECT_ID).to_pylist()))


def _expunge_command() -> list[str]:
    script = Path(sys.executable).with_name("expunge")
    if script.exists():
        return [str(script)]
    found = shutil.which("expunge")
    return [found] if found else [sys.executable, "-m", "expunge.pipelines.cli"]


def _cold_cli(store: Path, subject: str, env: dict[str, str]) -> tuple[float, float]:
    """One ``expunge forget`` process; returns (wall seconds, its receipt's retrain seconds).

    Raises:
        RuntimeError: the process did not exit 0 (its stderr is in the message).
    """
    command = [*_expunge_command(), "forget", "--storage", str(store), "--subject", subject]
    began = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"`{shlex.join(command)}` exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds, ErasureReceipt.model_validate_json(done.stdout).retrain_seconds


# ----- latency -----------------------------------------------------------------------------------
def _latency(
    rows: pa.Table,
    settings: ServiceBenchmarkSettings,
    training: TrainingConfig,
    key: str,
    scratch: Path,
    cli_env: dict[str, str],
) -> LatencyResult:
    hasher = SubjectHasher(key.encode())
    train, test = split_rows(rows, 0.2, settings.seed)
    with progress(f"monolith (S=1, R=1): training on {train.num_rows} rows and one full retrain"):
        monolith = measure_monolith(train, test, training, settings.seed, hasher)
    tracking = TrackingConfig(uri=f"sqlite:///{scratch / 'mlflow.db'}", experiment="service-latency")
    job = _job(scratch / "store", tracking, settings, training)
    _train_store(train, job, hasher)
    subjects = _subjects(train)
    needed = settings.requests + settings.cold
    if needed > len(subjects):
        raise ValueError(f"{needed} latency erasures need as many subjects; the rows hold {len(subjects)}")
    chosen = [subjects[int(i)] for i in np.random.default_rng(settings.seed).choice(len(subjects), needed, False)]
    cold_subjects, sdk_subjects = chosen[: settings.cold], chosen[settings.cold :]
    # Before the service starts: the CLI commits to the store alone, as an operator without one would.
    with progress(f"{len(cold_subjects)} cold `expunge forget` process(es)", quiet=not cold_subjects):
        cold = [_cold_cli(scratch / "store", subject, cli_env) for subject in cold_subjects]
    committed: list[float] = []
    registered: list[float] = []
    retrain: list[float] = []
    with _serving(job) as (client, started), progress(f"{len(sdk_subjects)} one-subject erasures through the SDK"):
        for subject in sdk_subjects:  # one after another: each is timed alone
            began = time.perf_counter()
            receipt = client.forget([subject])
            committed.append(time.perf_counter() - began)
            client.wait(receipt.request_id, stage="registered", timeout=_WAIT_S)
            registered.append(time.perf_counter() - began)
            retrain.append(receipt.retrain_seconds)
    summary = {name: percentiles(v) for name, v in (("c", committed), ("r", registered), ("t", retrain))}
    return LatencyResult(
        rows=train.num_rows,
        subjects=len(subjects),
        service_start_seconds=started,
        committed=summary["c"],
        registered=summary["r"],
        retrain=summary["t"],
        committed_seconds=committed,
        registered_seconds=registered,
        retrain_seconds=retrain,
        cold_cli_seconds=[c[0] for c in cold],
        cold_cli_retrain_seconds=[c[1] for c in cold],
        monolith_train_seconds=monolith.train_seconds,
        monolith_retrain_seconds=monolith.retrain_seconds[0] if monolith.retrain_seconds else 0.0,
        monolith_erasure_seconds=monolith.erasure_seconds_median,
        checks=latency_checks(summary["c"].p50, summary["r"].p50, summary["t"].p50),
    )


# ----- load --------------------------------------------------------------------------------------
class _Sampler:
    """Polls ``client.stats()`` every ``_SAMPLE_EVERY_S`` in a thread; keeps (seconds, stats) pairs."""

    def __init__(self, client: RayClient, began: float) -> None:
        self._client = client
        self._began = began
        self._stop = threading.Event()
        self.samples: list[tuple[float, Any]] = []
        self._thread = threading.Thread(target=self._poll, name="stats-sampler", daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - self._began, self._client.stats()))
            self._stop.wait(_SAMPLE_EVERY_S)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter() - self._began, self._client.stats()))


def _seconds_between(earlier: str | None, later: str | None) -> float | None:
    if earlier is None or later is None:
        return None
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def _wait(client: RayClient, request_id: str, stage: Literal["committed", "registered"]) -> None:
    """Wait for ``stage``; a failed or timed-out request is counted by its final status, not raised."""
    try:
        client.wait(request_id, stage, _WAIT_S)
    except ExpungeError as exc:
        log.error("request %s did not reach %s: %s", request_id, stage, exc)


def _memory_points(samples: list[tuple[float, Any]]) -> list[MemorySample]:
    """The first sample, the one nearest half-way through the run (by time), and the last."""
    middle = min(samples, key=lambda sample: abs(sample[0] - samples[-1][0] / 2))
    return [
        MemorySample(
            at=at,
            seconds=t,
            queued=stats.queued,
            committed=stats.committed,
            coordinator_peak_rss_bytes=stats.peak_rss_bytes,
        )
        for at, (t, stats) in (("start", samples[0]), ("middle", middle), ("end", samples[-1]))
    ]


def _map(threads: int, call: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(call, items))


def _load(settings: ServiceBenchmarkSettings, training: TrainingConfig, key: str, scratch: Path) -> LoadResult:
    if settings.load_requests > settings.load_subjects:
        raise ValueError(
            f"--load-requests {settings.load_requests} > --load-subjects {settings.load_subjects}: "
            "each request erases a different subject"
        )
    hasher = SubjectHasher(key.encode())
    rows = synthetic_ratings(
        SyntheticRatingsConfig(
            users=settings.load_subjects,
            items=settings.load_items,
            ratings_per_user=settings.load_ratings_per_user,
            seed=settings.seed,
        )
    )
    tracking = TrackingConfig(uri=f"sqlite:///{scratch / 'mlflow.db'}", experiment="service-load")
    job = _job(scratch / "store", tracking, settings, training)
    _train_store(rows, job, hasher)
    subjects = _subjects(rows)
    order = np.random.default_rng(settings.seed).permutation(len(subjects))[: settings.load_requests]
    targets = [subjects[int(i)] for i in order]
    with _serving(job) as (client, _):
        began_at = datetime.now(UTC)
        began = time.perf_counter()
        with _Sampler(client, began) as sampler:
            with progress(f"submitting {len(targets)} requests from {settings.threads} threads"):
                ids: list[str] = _map(settings.threads, lambda s: client.submit([s]), targets)
            submitted = time.perf_counter() - began
            with progress("waiting until every request is committed"):
                _map(settings.threads, lambda i: _wait(client, i, "committed"), ids)
            with progress("waiting until every request is registered"):
                _map(settings.threads, lambda i: _wait(client, i, "registered"), ids)
        stats = client.stats()
        statuses = _map(settings.threads, client.status, ids)  # every request's final stage, read back
    stages = Counter(s.stage for s in statuses)
    committed = [d for s in statuses if (d := _seconds_between(s.received_at, s.committed_at)) is not None]
    registered = [d for s in statuses if (d := _seconds_between(s.received_at, s.registered_at)) is not None]
    last_commit = max((_seconds_between(began_at.isoformat(), s.committed_at) or 0.0) for s in statuses)
    last_registration = max((_seconds_between(began_at.isoformat(), s.registered_at) or 0.0) for s in statuses)
    return LoadResult(
        subjects=settings.load_subjects,
        requests=len(ids),
        threads=settings.threads,
        submit_seconds=submitted,
        last_commit_seconds=last_commit,
        last_registration_seconds=last_registration,
        throughput_per_s=len(ids) / last_commit if last_commit > 0 else 0.0,
        batches=stats.batches,
        shard_retrains=stats.shard_retrains,
        registrations=stats.registrations,
        stages=dict(stages),
        committed=percentiles(committed),
        registered=percentiles(registered),
        memory=_memory_points(sampler.samples),
        driver_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        complete=stages.get("registered", 0) == len(ids),
    )


# ----- the run -----------------------------------------------------------------------------------
def run(
    latency_rows: pa.Table | None, training: TrainingConfig, settings: ServiceBenchmarkSettings
) -> ServiceBenchmark:
    """Latency on ``latency_rows`` (skipped when None), then the load run, in the current Ray cluster.

    A random digest key is made for this run and set in the environment variable the job's
    privacy settings name while the services start (the previous value is restored after).
    Everything is written to a scratch folder that is deleted at the end.

    Raises:
        ValueError: more erasures asked for than there are subjects.
        RuntimeError: a cold CLI process failed.
        ExpungeError: a service did not start or a request failed (the error says why).
    """
    machine = MachineInfo(cpus=os.cpu_count() or 1, platform=platform.platform(), load_average_start=os.getloadavg())
    key_env = JobConfig().privacy.subject_key_env
    key = secrets.token_hex(32)
    had_ray_address = "RAY_ADDRESS" in os.environ
    init_ray()
    previous_key = os.environ.get(key_env)
    os.environ[key_env] = key  # this process digests (the service reads the scratch folder's key file)
    cli_env = {**os.environ, key_env: key}
    if not had_ray_address:
        cli_env.pop("RAY_ADDRESS", None)  # the cold CLI starts its own Ray, as a lone `expunge forget` does
    try:
        with tempfile.TemporaryDirectory(prefix="expunge-bench-service-") as scratch:
            root = Path(scratch)
            (root / _KEY_FILE).touch(mode=0o600)
            (root / _KEY_FILE).write_text(key)
            latency = None
            if latency_rows is not None:
                (root / "latency").mkdir()
                latency = _latency(latency_rows, settings, training, key, root / "latency", cli_env)
            (root / "load").mkdir()
            load = _load(settings, training, key, root / "load")
    finally:
        if previous_key is None:
            os.environ.pop(key_env, None)
        else:
            os.environ[key_env] = previous_key
    machine = machine.model_copy(update={"load_average_end": os.getloadavg()})
    return ServiceBenchmark(settings=settings, training=training, machine=machine, latency=latency, load=load)


def _stream_length(rate: float | None, duration: float | None) -> float:
    """Pure: the stream's seconds (60 by default), refused (``ConfigError``) unless it is a stream of >= 1 request."""
    if rate is None:
        if duration is not None:  # ignored, the latency and load run would start instead: minutes, not seconds
            raise ConfigError(
                f"--duration {duration:g} sets how long the paced stream lasts, and there is no stream without "
                "--rate R (requests per second); add --rate, or drop --duration"
            )
        return 60.0
    length = 60.0 if duration is None else duration
    if not (math.isfinite(rate) and math.isfinite(length)) or round(rate * length) < 1:
        raise ConfigError(
            f"--rate {rate:g} for --duration {length:g} s is not a stream of at least one request: give finite "
            "values whose product is at least 1 (e.g. --rate 20 --duration 60)"
        )
    return length


def run_stream_benchmark(
    rows: pa.Table, training: TrainingConfig, settings: ServiceBenchmarkSettings, stream: StreamSettings
) -> StreamResult:
    """The paced stream (``expunge.pipelines.benchmark_stream``) on the 80 % split of ``rows``, in this Ray cluster.

    Key and scratch folder as ``run``; the store is trained with MLflow on, then the service starts.

    Raises:
        ExpungeError: the service did not start or the store could not be trained (the error says why).
    """
    from expunge.pipelines.benchmark_stream import run_stream, stream_rows

    key_env = JobConfig().privacy.subject_key_env
    key = secrets.token_hex(32)
    init_ray()
    previous_key = os.environ.get(key_env)
    os.environ[key_env] = key
    try:
        with tempfile.TemporaryDirectory(prefix="expunge-bench-stream-") as scratch:
            root = Path(scratch)
            (root / _KEY_FILE).touch(mode=0o600)
            (root / _KEY_FILE).write_text(key)
            (root / "stream").mkdir()
            train = stream_rows(rows)
            tracking = TrackingConfig(uri=f"sqlite:///{root / 'stream' / 'mlflow.db'}", experiment="service-stream")
            job = _job(root / "stream" / "store", tracking, settings, training)
            _train_store(train, job, SubjectHasher(key.encode()))
            with _serving(job) as (client, _), progress(f"{stream.rate:g} requests/s for {stream.duration:g} s"):
                return run_stream(client, job, _subjects(train), train.num_rows, stream)
    finally:
        if previous_key is None:
            os.environ.pop(key_env, None)
        else:
            os.environ[key_env] = previous_key


# ----- output ------------------------------------------------------------------------------------
def _s(value: float) -> str:
    return f"{value:.3f}"


def _mib(value: int) -> str:
    return f"{value / 2**20:.0f} MiB"


def latency_table(latency: LatencyResult) -> Table:
    table = Table(title=f"Erasure latency, one subject ({latency.rows} rows, {latency.subjects} subjects; seconds)")
    for column in ("path", "n", "p50", "p95", "max"):
        table.add_column(column, justify="right" if column != "path" else "left")
    for name, p in (
        ("SDK forget -> committed (warm service)", latency.committed),
        ("SDK -> registered (MLflow, older versions purged)", latency.registered),
        ("retrain work (receipt.retrain_seconds)", latency.retrain),
        ("cold CLI `expunge forget` (process)", percentiles(latency.cold_cli_seconds)),
    ):
        shown = (_s(p.p50), _s(p.p95), _s(p.max)) if p.n else ("n/a", "n/a", "n/a")  # e.g. --cold 0: none ran
        table.add_row(name, str(p.n), *shown)
    table.add_row("monolith (S=1): retrain without the subject", "1", _s(latency.monolith_retrain_seconds), "", "")
    table.add_row("monolith (S=1): whole erasure", "1", _s(latency.monolith_erasure_seconds), "", "")
    table.add_row("service start (warm shard actors)", "1", _s(latency.service_start_seconds), "", "")
    return table


def checks_table(checks: Sequence[Check]) -> Table:
    table = Table(title="Targets")
    for column in ("check", "measured s", "limit s", "result"):
        table.add_column(column, justify="right" if column != "check" else "left")
    for c in checks:
        table.add_row(c.name, _s(c.measured), _s(c.limit), "pass" if c.passed else "FAIL")
    return table


def load_table(load: LoadResult) -> Table:
    table = Table(
        title=f"Load: {load.requests} single-subject requests, {load.subjects} subjects, {load.threads} threads"
    )
    table.add_column("measure", justify="left")
    table.add_column("value", justify="right")
    rows = [
        ("all submitted (journalled) after", f"{load.submit_seconds:.1f} s"),
        ("last commit after", f"{load.last_commit_seconds:.1f} s"),
        ("last registration after", f"{load.last_registration_seconds:.1f} s"),
        ("throughput to commit", f"{load.throughput_per_s:.1f} requests/s"),
        ("batches (store commits)", str(load.batches)),
        ("shard retrains", str(load.shard_retrains)),
        ("MLflow registrations", str(load.registrations)),
        ("stages", ", ".join(f"{k}: {v}" for k, v in sorted(load.stages.items()))),
        ("committed latency p50 / p95", f"{load.committed.p50:.2f} / {load.committed.p95:.2f} s"),
        ("registered latency p50 / p95", f"{load.registered.p50:.2f} / {load.registered.p95:.2f} s"),
        *(
            (
                f"coordinator peak RSS, {m.at} ({m.seconds:.0f} s: {m.queued} queued, {m.committed} committed)",
                _mib(m.coordinator_peak_rss_bytes),
            )
            for m in load.memory
        ),
        ("driver peak RSS", _mib(load.driver_peak_rss_bytes)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def main(
    data: Path | None = typer.Option(
        None, help="MovieLens ratings for the latency part (u.data or ml-100k.inter); not needed with --http"
    ),
    http: bool = typer.Option(
        False, "--http", help="load the HTTP API instead: --clients concurrent clients, p50/p95/p99 per stage"
    ),
    clients: int = typer.Option(50, min=1, help="--http: concurrent HTTP clients"),
    subjects: int = typer.Option(2000, min=2, help="--http: subjects of the synthetic store"),
    probes: int = typer.Option(200, min=1, help="--http: status reads timed through HTTP and as a Ray call"),
    shards: int = typer.Option(8, min=1, help="S of both stores"),
    slices: int = typer.Option(8, min=1, help="R of both stores"),
    requests: int = typer.Option(
        20, min=1, help="one-subject SDK erasures for the latency figures (--http: the HTTP erasures)"
    ),
    cold: int = typer.Option(2, min=0, help="cold `expunge forget` processes (0: none)"),
    load_subjects: int = typer.Option(10_000, min=2, help="subjects of the synthetic load store"),
    load_requests: int = typer.Option(10_000, min=1, help="single-subject requests of the load run"),
    threads: int = typer.Option(16, min=1, help="client threads submitting the load"),
    epochs: int = typer.Option(20, min=1, help="epoch budget of the monolith and of every shard (parity)"),
    batch_size: int = typer.Option(512, min=1, help="batch of the monolith and of every shard (parity)"),
    output: Path = typer.Option(Path("benchmark-service.json"), help="JSON results file"),
    seed: int = typer.Option(0),
    model: str = typer.Option("mf", help="model family of the stores: mf or item_stats"),
    rate: float | None = typer.Option(
        None, min=0.001, help="run the paced stream instead: requests per second (with --duration)"
    ),
    duration: float | None = typer.Option(None, min=0.001, help="--rate: seconds the stream lasts (60 when not given)"),
    window_ms: float = typer.Option(
        _DEFAULT_WINDOW_MS, min=0.0, help="service.window_ms of the services (coalescing window)"
    ),
) -> None:
    """Erasure latency through the warm service (vs the cold CLI and a monolithic retrain), then a load run.

    With --rate (and --data): a paced stream instead, printing per stage (committed, ready,
    ready_to_serve, the same for requests that erased someone, registered) p50/p99/max, the exact
    solve timed alone once the CPUs are idle and again right after (warm), and ready_to_serve over
    each (up to 15 s of waiting for idle CPUs before each of the 6 solves). The stream trains one
    store (--shards, --slices; --epochs and --batch-size for mf only) and submits from --threads
    threads; --requests, --cold and --load-* apply to the other runs only. Exit 1 when a request did not complete: for the
    load run, reach "registered"; for the stream, be registered and ready.
    """
    init_logging()
    with exit_on_error():
        writable_output(output)  # checked first: the results are written after minutes of work
    with exit_on_error():
        stream_length = _stream_length(rate, duration)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if http:
        from expunge.pipelines.benchmark_http import HttpSettings, print_http, run_http

        if rate is not None:  # the HTTP load has no pacer: it would run unpaced and say nothing
            with exit_on_error():
                raise ConfigError(
                    f"--rate {rate:g} paces the stream of the latency run, and --http runs the HTTP load instead "
                    "(--clients concurrent clients, as fast as they are answered); drop --http or --rate"
                )

        http_settings = HttpSettings(
            shards=shards,
            slices=slices,
            subjects=subjects,
            requests=requests,
            clients=clients,
            probes=probes,
            seed=seed,
        )
        with exit_on_error():
            http_result = run_http(http_settings, parity_training(epochs, batch_size))
        print_http(http_result, output)
        if http_result.completed < http_settings.requests:
            raise typer.Exit(1)
        return
    if data is None:
        with exit_on_error():
            if rate is not None:
                raise ConfigError(
                    f"the stream (--rate {rate:g}) needs --data FILE: MovieLens ratings (u.data or ml-100k.inter) "
                    "to train its store on; pass --data"
                )
            raise ConfigError("pass --data FILE (MovieLens ratings), or --http for the HTTP load run")
    if model not in ("mf", "item_stats"):
        with exit_on_error():
            raise ConfigError(f"--model {model!r}: choose mf or item_stats")
    settings = ServiceBenchmarkSettings(
        shards=shards,
        slices=slices,
        requests=requests,
        cold=cold,
        load_subjects=load_subjects,
        load_requests=load_requests,
        threads=threads,
        window_ms=window_ms,
        seed=seed,
    )
    training = parity_training(epochs, batch_size)
    if model == "item_stats":
        training = training.model_copy(update={"model": ItemStatsConfig()})
    console = Console()
    if rate is not None:
        from expunge.pipelines.benchmark_stream import StreamSettings, stream_table

        stream = StreamSettings(model=model, rate=rate, duration=stream_length, threads=threads)
        with exit_on_error():
            streamed = run_stream_benchmark(load_movielens(data), training, settings, stream)
        console.print(stream_table(streamed, stream, training))
        output.write_text(
            json.dumps(
                {"command": shlex.join(sys.argv), "data": str(data), "window_ms": window_ms, **streamed.model_dump()},
                indent=1,
                default=str,
            )
        )
        Console(stderr=True).print(f"results written to {output}")
        if streamed.lost:
            raise typer.Exit(1)
        return
    result = run(load_movielens(data), training, settings)
    if result.latency is not None:
        console.print(latency_table(result.latency))
        console.print(checks_table(result.latency.checks))
    console.print(load_table(result.load))
    console.print(
        f"machine: {result.machine.cpus} CPUs, load average {result.machine.load_average_start[0]:.1f} at the "
        f"start, {result.machine.load_average_end[0]:.1f} at the end; {result.machine.platform}"
    )
    output.write_text(
        json.dumps({"command": shlex.join(sys.argv), "data": str(data), **result.model_dump(mode="json")}, indent=1)
    )
    Console(stderr=True).print(f"results written to {output}")
    if not result.load.complete:
        console.print(f"[red]not every load request completed: {result.load.stages}[/red]")
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
