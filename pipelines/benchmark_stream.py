"""Recipe part: a paced stream of erasure requests through the warm service, stage by stage (issue 22).

    expunge benchmark service --data ../shared/data/ml-100k/ml-100k.inter --model item_stats --rate 20 --duration 60

A store of ``--model`` (``item_stats`` or ``mf``) is trained on the 80 % split of the ratings at
S x R with MLflow on; the service starts in this Ray cluster and is warmed by a few erasures
(each waited for until registered and ready). Then, with the service idle, the exact solve of
the published version is timed alone in the service's own process
(``ErasureService.exact_solve_seconds``, ``StreamSettings.solves`` times, 3 on the command line),
and as often again once every request of the stream is registered and ready (the reference is the
p50 of both: one quiet moment's draw moved it by a third). Each of those solves first waits, up to
15 s, until the machine's CPUs were at most 5 % busy over a second (``quiet_cpus.wait_until_quiet``;
a solve the CPUs never went quiet for is timed anyway, logged as a warning, and counted in the
summary: at most 6 x 15 s more on a busy machine), and is followed at once by the same solve again,
timed as the *warm* solve. On this two-core VM a solve after a pause of a few seconds took up to
twice the CPU of the same solve right after another (caches and memory gone cold: 0.52-0.76 s
against 0.31-0.33 s for the fit alone, in the service's process), so the first solve's p50 depends
on how long the machine idled, and a ratio over it flatters the stream, whose solves run back to
back. Both ratios are printed; the warm one is the strict one. Then ``rate x duration``
one-subject requests are submitted on a fixed schedule (request i at ``i / rate`` s, from a thread pool so a slow submit does not shift the
next). Real erasures are spread evenly over the stream and cover at most half of the subjects
(MovieLens 100K has 943; a 60 s stream at 20 requests/s is 1,200 requests); the other requests
name ids the store never held (a ``not_found`` receipt, journalled and registered like any).

Per request, from the service's own timestamps: *committed* (received -> committed),
*ready* (received -> the served model reflects it), *ready_to_serve* (committed -> ready) and
*registered* (received -> MLflow has it). *Lost*: a request that did not reach registered and
ready. The ratio is ready_to_serve p50 *of the requests whose own subjects were erased* over the
exact solve alone (p50), both measured in this run: a request that erased nobody (``not_found``)
changes no model, and is ready when its batch commits (0 s) unless a real erasure shares its
batch, so a ratio over every request falls as more of them commit alone. Both are printed.
A model with no exact solve (``mf``: its shard actors serve it) has neither: ``n/a`` in the
table, null in the JSON.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import ray
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Group
from rich.table import Table

from expunge import RayClient
from expunge.orchestrator.config import JobConfig, TrainingConfig
from expunge.orchestrator.errors import ExpungeError
from expunge.orchestrator.service.journal import RequestStatus
from expunge.pipelines.benchmark_service import Percentiles, percentiles
from expunge.pipelines.quiet_cpus import wait_until_quiet

__all__ = ["StreamResult", "StreamSettings", "erased_ready_to_serve", "even_spread", "solve_ratio", "stream_table"]

log = logging.getLogger(__name__)

_WAIT_S = 600.0
_QUIET_LIMIT_S = 15.0  # the longest wait for idle CPUs before a solve alone; timed anyway after it


class StreamSettings(BaseModel):
    """The paced stream: ``rate`` requests per second for ``duration`` seconds, after ``warmup`` erasures."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model: Literal["item_stats", "mf"] = "item_stats"
    rate: float = Field(20.0, gt=0.0)
    duration: float = Field(60.0, gt=0.0)
    warmup: int = Field(3, ge=0)
    solves: int = Field(3, ge=1)
    threads: int = Field(16, ge=1)


class StreamResult(BaseModel):
    """What the stream measured (seconds; percentiles as ``benchmark_service.Percentiles``)."""

    model: str
    rows: int
    subjects: int
    requests: int
    real_erasures: int
    lost: int
    stages: dict[str, int]
    committed: Percentiles
    ready: Percentiles
    ready_to_serve: Percentiles
    #: ``ready_to_serve`` of the requests whose own subjects were erased (the served model had to change).
    ready_to_serve_erased: Percentiles
    registered: Percentiles
    throughput_per_s: float
    #: The exact solve of the published version alone; None for a model with none (``mf``).
    exact_solve: Percentiles | None
    #: ``ready_to_serve_erased`` p50 over ``exact_solve`` p50; None without an exact solve.
    ready_to_serve_over_exact_solve: float | None
    submit_lateness_max_s: float
    batches: int
    shard_retrains: int
    registrations: int
    #: The run's shape, so that a JSON file says what it measured: S, R, requests/s, seconds.
    shards: int | None = None
    slices: int | None = None
    rate: float | None = None
    duration: float | None = None
    #: ``os.getloadavg()`` when the stream's last request settled (1, 5 and 15 minutes).
    load_average_end: tuple[float, float, float] | None = None
    #: The same solve again right after each of those (warm caches and memory): the solve's own
    #: cost, steadier than one after a pause (``exact_solve``), which this machine runs up to 2x slower.
    exact_solve_warm: Percentiles | None = None
    #: ``ready_to_serve_erased`` p50 over ``exact_solve_warm`` p50: the strict ratio.
    ready_to_serve_over_warm_solve: float | None = None
    #: Every exact solve alone, seconds, in the order taken: those before the stream, then those after.
    exact_solve_samples: list[float] | None = None
    warm_solve_samples: list[float] | None = None
    #: Seconds each of those solves waited for idle CPUs first (``quiet_cpus``), in the same order;
    #: None: the CPUs never went quiet within 15 s (or not Linux), and the solve was timed anyway.
    quiet_waits: list[float | None] | None = None


def even_spread(total: int, real: int) -> list[bool]:
    """Pure: which of ``total`` requests are real erasures, ``real`` of them spread evenly (the first is real)."""
    real = max(0, min(real, total))
    return [(i * real) // total != ((i + 1) * real) // total for i in range(total)] if total else []


def erased_ready_to_serve(outcomes: Sequence[tuple[str | None, float | None]]) -> list[float]:
    """Pure: the ``ready_to_serve`` seconds of the requests that erased someone.

    ``outcomes``: per request, its own receipt's status (``erased``, ``not_found``; None before a
    commit) and its ``ready_to_serve_s`` (None before ready).
    """
    return [seconds for status, seconds in outcomes if status == "erased" and seconds is not None]


def solve_ratio(ready_to_serve: Percentiles, solves: list[float]) -> tuple[Percentiles | None, float | None]:
    """Pure: the exact solve's percentiles and ``ready_to_serve`` p50 over its p50; (None, None) without one.

    The service reports 0.0 s for a model with no exact solve (``mf``: its shard actors serve it).
    """
    if not solves or max(solves) <= 0.0:
        return None, None
    exact = percentiles(solves)
    return exact, ready_to_serve.p50 / exact.p50


def _seconds(earlier: str | None, later: str | None) -> float | None:
    if earlier is None or later is None:
        return None
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def _settle(client: RayClient, request_id: str) -> RequestStatus:
    """Wait until the request is registered and ready (or failed, or ``_WAIT_S`` passed); its last status."""
    deadline = time.monotonic() + _WAIT_S
    try:
        client.wait(request_id, "registered", _WAIT_S)
    except ExpungeError as exc:
        log.error("request %s did not reach registered: %s", request_id, exc)
    status: RequestStatus = client.status(request_id)
    while status.stage != "failed" and status.ready_at is None and time.monotonic() < deadline:
        time.sleep(0.2)
        status = client.status(request_id)
    return status


def _solve_alone(actor: Any, waits: list[float | None]) -> tuple[float, float]:
    """Two exact solves timed back to back in the service's process once the machine's CPUs are idle
    (``quiet_cpus``): the first after a pause, the second warm."""
    log.info("waiting up to %.0f s for idle CPUs before an exact solve alone", _QUIET_LIMIT_S)
    waits.append(wait := wait_until_quiet(limit_s=_QUIET_LIMIT_S))
    if wait is None:
        log.warning(
            "the CPUs were not idle within %.0f s (or not Linux): this solve is timed beside other work", _QUIET_LIMIT_S
        )
    first = float(str(ray.get(actor.exact_solve_seconds.remote())))
    return first, float(str(ray.get(actor.exact_solve_seconds.remote())))


def run_stream(
    client: RayClient, job: JobConfig, subjects: list[str], rows: int, settings: StreamSettings
) -> StreamResult:
    """The warm-up, the exact solve alone, then the paced stream, against the running service ``client``."""
    rng = np.random.default_rng(0)
    order = [subjects[int(i)] for i in rng.permutation(len(subjects))]
    warm, pool = order[: settings.warmup], order[settings.warmup :]
    for subject in warm:  # one after another, each to the end: the service is warm and idle after
        _settle(client, client.submit([subject]))
    actor = ray.get_actor(job.service.name, namespace=job.service.namespace)
    quiet: list[float | None] = []
    pairs = [_solve_alone(actor, quiet) for _ in range(settings.solves)]
    total = round(settings.rate * settings.duration)
    real = even_spread(total, len(pool) // 2)
    targets, taken = [], 0
    for i, is_real in enumerate(real):
        targets.append(pool[taken] if is_real else f"absent-stream-{i}")
        taken += is_real
    before = client.stats()
    lateness: list[float] = []
    with concurrent.futures.ThreadPoolExecutor(settings.threads) as submitters:
        began = time.monotonic()
        futures = []
        for i, subject in enumerate(targets):
            due = began + i / settings.rate
            if (pause := due - time.monotonic()) > 0:
                time.sleep(pause)
            lateness.append(max(0.0, time.monotonic() - due))
            futures.append(submitters.submit(client.submit, [subject]))
        ids = [f.result() for f in futures]
        statuses = list(submitters.map(lambda i: _settle(client, i), ids))
    pairs += [_solve_alone(actor, quiet) for _ in range(settings.solves)]
    solves, warm_solves = [first for first, _ in pairs], [second for _, second in pairs]
    after = client.stats()
    stages = Counter(s.stage for s in statuses)
    committed = [d for s in statuses if (d := _seconds(s.received_at, s.committed_at)) is not None]
    ready = [d for s in statuses if (d := _seconds(s.received_at, s.ready_at)) is not None]
    to_serve = [s.ready_to_serve_s for s in statuses if s.ready_to_serve_s is not None]
    registered = [d for s in statuses if (d := _seconds(s.received_at, s.registered_at)) is not None]
    first = min(s.received_at for s in statuses)
    last = max((s.committed_at or first) for s in statuses)
    span = _seconds(first, last) or 0.0
    serve = percentiles(to_serve)
    erased = percentiles(
        erased_ready_to_serve([(s.receipt.status if s.receipt else None, s.ready_to_serve_s) for s in statuses])
    )
    exact, ratio = solve_ratio(erased, solves)
    warm_exact, warm_ratio = solve_ratio(erased, warm_solves)
    return StreamResult(
        model=settings.model,
        rows=rows,
        subjects=len(subjects),
        requests=len(ids),
        real_erasures=sum(real),
        lost=sum(1 for s in statuses if s.stage != "registered" or s.ready_at is None),
        stages=dict(stages),
        committed=percentiles(committed),
        ready=percentiles(ready),
        ready_to_serve=serve,
        ready_to_serve_erased=erased,
        registered=percentiles(registered),
        throughput_per_s=len(committed) / span if span > 0 else 0.0,
        exact_solve=exact,
        ready_to_serve_over_exact_solve=ratio,
        exact_solve_warm=warm_exact,
        ready_to_serve_over_warm_solve=warm_ratio,
        submit_lateness_max_s=max(lateness, default=0.0),
        batches=after.batches - before.batches,
        shard_retrains=after.shard_retrains - before.shard_retrains,
        registrations=after.registrations - before.registrations,
        shards=job.sharding.shards,
        slices=job.sharding.slices,
        rate=settings.rate,
        duration=settings.duration,
        load_average_end=os.getloadavg(),
        exact_solve_samples=[round(s, 4) for s in solves],
        warm_solve_samples=[round(s, 4) for s in warm_solves],
        quiet_waits=[None if q is None else round(q, 1) for q in quiet],
    )


def stream_table(result: StreamResult, settings: StreamSettings, training: TrainingConfig) -> Group:
    """The stream's figures: p50/p99/max per stage (seconds), then a summary (throughput, lost, the ratio, counts)."""
    table = Table(
        title=(
            f"Service stream: {result.model}, {settings.rate:g} requests/s for {settings.duration:g} s "
            f"({result.requests} requests, {result.real_erasures} real erasures; {result.rows} rows)"
        )
    )
    for column in ("stage", "n", "p50 s", "p99 s", "max s"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for name, p in (
        ("committed (received -> committed)", result.committed),
        ("ready (received -> served model reflects it)", result.ready),
        ("ready_to_serve (committed -> ready)", result.ready_to_serve),
        ("ready_to_serve, requests that erased someone", result.ready_to_serve_erased),
        ("registered (received -> MLflow)", result.registered),
    ):
        table.add_row(name, str(p.n), f"{p.p50:.3f}", f"{p.p99:.3f}", f"{p.max:.3f}")
    solve, ratio = result.exact_solve, result.ready_to_serve_over_exact_solve
    if solve is None:  # mf: its shard actors serve it, there is no exact solve to compare with
        table.add_row(f"exact solve alone (none for {result.model})", "0", "n/a", "n/a", "n/a")
    else:
        solves: list[tuple[str, Percentiles | None]] = [
            ("exact solve alone, after a pause (service idle, same process)", solve),
            ("exact solve alone, warm (right after another)", result.exact_solve_warm),
        ]
        for label, alone in solves:
            if alone is not None:
                table.add_row(label, str(alone.n), f"{alone.p50:.3f}", f"{alone.p99:.3f}", f"{alone.max:.3f}")
    summary = Table(title="Summary")
    summary.add_column("measure", justify="left")
    summary.add_column("value", justify="right")
    summary.add_row("throughput to commit", f"{result.throughput_per_s:.1f} requests/s")
    summary.add_row("lost (not registered and ready)", str(result.lost))
    summary.add_row("ready_to_serve p50 (erased) / exact solve p50", "n/a" if ratio is None else f"{ratio:.2f}x")
    warm = result.ready_to_serve_over_warm_solve
    summary.add_row(
        "ready_to_serve p50 (erased) / warm exact solve p50 (strict)", "n/a" if warm is None else f"{warm:.2f}x"
    )
    if result.quiet_waits:
        never = sum(1 for w in result.quiet_waits if w is None)
        summary.add_row(
            "solves timed on idle CPUs (else beside other work)",
            f"{len(result.quiet_waits) - never} of {len(result.quiet_waits)}",
        )
    summary.add_row(
        "store commits / shard retrains / registrations",
        f"{result.batches} / {result.shard_retrains} / {result.registrations}",
    )
    summary.add_row("pacer lateness, max", f"{result.submit_lateness_max_s:.3f} s")
    return Group(table, summary)


def stream_rows(rows: pa.Table) -> pa.Table:
    """The rows a stream store is trained on: the 80 % split the other service figures use."""
    from expunge.pipelines.datasets import split_rows

    return split_rows(rows, 0.2, 0)[0]
