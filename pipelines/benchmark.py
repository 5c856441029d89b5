"""Recipe: the MovieLens benchmark. Monolithic vs SISA at several (S, R), measured side by side.

    python -m pipelines.benchmark --data ../shared/data/ml-100k/ml-100k.inter

For each configuration: training time, test RMSE on a seeded 80/20 split, the median
erasure time of several random subjects, the median speed-up (``ErasureReceipt.speedup``: the
full retrain's training phase over the erasure's retraining phase, the one meaning of
speed-up in Expunge) and the ideal speed-up the slice arithmetic allows (work of a full
retrain over work of the erasure's retrain, with the actual first affected slices). Timings are wall-clock
on whatever machine runs it: compare ratios within one run, never across machines.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from orchestrator.config import JobConfig, MFConfig, ShardingConfig, TrainingConfig
from orchestrator.coordinator import Coordinator
from orchestrator.digests import SubjectHasher
from pipelines._runtime import init_logging, init_ray
from pipelines.datasets import load_movielens, split_rows
from shards.rows import RATING, SUBJECT_ID

__all__ = ["BenchmarkRow", "ideal_speedup", "main", "run"]

log = logging.getLogger(__name__)


class BenchmarkRow(BaseModel):
    storage: str = "local"
    shards: int
    slices: int
    batch_size: int
    train_seconds: float
    test_rmse: float
    erasure_seconds_median: float
    erasure_seconds: list[float]
    first_affected_slices: list[int]
    speedup: float
    ideal_speedup: float


def ideal_speedup(shards: int, slices: int, first_affected: list[int]) -> float:
    """Work of retraining every shard over the mean work of retraining one shard from slice k.

    Step j (1-based) trains on j/R of a shard with the same epochs, so its work is
    proportional to j; an erasure from 0-based slice k redoes steps k+1..R.
    """
    full = shards * sum(range(1, slices + 1))
    partial = statistics.mean(sum(range(k + 1, slices + 1)) for k in first_affected)
    return full / partial


def _rmse(coordinator: Coordinator, test: pa.Table) -> float:
    predictions = np.clip(coordinator.predict(test), 1, 5)
    return float(np.sqrt(np.mean((predictions - test.column(RATING).to_numpy()) ** 2)))


def _measure(
    train: pa.Table,
    test: pa.Table,
    shards: int,
    slices: int,
    training: TrainingConfig,
    erasures: int,
    seed: int,
    hasher: SubjectHasher,
    storage: str | None = None,
) -> BenchmarkRow:
    # Same number of optimizer steps per epoch for every S: a shard holds 1/S of the rows.
    batch = max(16, training.batch_size // shards)
    job = JobConfig(
        sharding=ShardingConfig(shards=shards, slices=slices),
        training=training.model_copy(update={"batch_size": batch}),
    )
    with tempfile.TemporaryDirectory(prefix="expunge-bench-") as scratch:
        uri = f"{storage}/S{shards}-R{slices}-{Path(scratch).name}" if storage else str(Path(scratch) / "store")
        coordinator = Coordinator(uri, hasher)
        result = coordinator.train(train, job)
        rmse = _rmse(coordinator, test)
        subjects = sorted(set(train.column(SUBJECT_ID).to_pylist()))
        chosen = np.random.default_rng(seed).choice(len(subjects), size=erasures, replace=False)
        seconds: list[float] = []
        speedups: list[float] = []
        firsts: list[int] = []
        for index in chosen:
            receipt = coordinator.forget([subjects[int(index)]])
            seconds.append(receipt.seconds)
            speedups.append(receipt.speedup)
            firsts.extend(s.first_affected_slice for s in receipt.shards)
        coordinator.close()
    median = statistics.median(seconds)
    return BenchmarkRow(
        storage="s3" if storage else "local",
        shards=shards,
        slices=slices,
        batch_size=batch,
        train_seconds=result.seconds,
        test_rmse=rmse,
        erasure_seconds_median=median,
        erasure_seconds=seconds,
        first_affected_slices=firsts,
        speedup=statistics.median(speedups),
        ideal_speedup=ideal_speedup(shards, slices, firsts),
    )


def start_loopback_s3() -> tuple[Any, str]:
    """moto's S3 server on 127.0.0.1 (a dev dependency) with a fresh bucket; returns (server, s3 URI).

    Its address and dummy credentials go into the environment before Ray starts, so shard
    actors reach the same server.
    """
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "benchmark"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "benchmark"),
            "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
        }
    )
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    boto3.client("s3").create_bucket(Bucket="expunge-benchmark")
    return server, "s3://expunge-benchmark/runs"


def run(
    data: Path,
    grid: list[tuple[int, int]],
    training: TrainingConfig,
    erasures: int = 5,
    seed: int = 0,
    s3_uri: str | None = None,
    s3_grid: list[tuple[int, int]] | None = None,
) -> list[BenchmarkRow]:
    """Every (S, R) of ``grid`` on local storage, then ``s3_grid`` on ``s3_uri`` (if given)."""
    rows = load_movielens(data)
    train, test = split_rows(rows, 0.2, seed)
    hasher = SubjectHasher(b"expunge-benchmark-key-not-secret!!")
    server = None
    if s3_uri == "moto":
        server, s3_uri = start_loopback_s3()
    init_ray()
    plan: list[tuple[int, int, str | None]] = [(s, r, None) for s, r in grid]
    if s3_uri:
        plan += [(s, r, s3_uri) for s, r in (s3_grid or [])]
    results = []
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task("benchmark", total=len(plan))
            for shards, slices, storage in plan:
                progress.update(task, description=f"S={shards} R={slices} on {storage or 'local disk'}")
                results.append(_measure(train, test, shards, slices, training, erasures, seed, hasher, storage))
                progress.advance(task)
    finally:
        if server is not None:
            server.stop()
    return results


def _table(results: list[BenchmarkRow]) -> Table:
    table = Table(title="Expunge on MovieLens 100K (80/20 split)")
    for column in (
        "storage",
        "S",
        "R",
        "batch",
        "train s",
        "test RMSE",
        "erasure s (median)",
        "speed-up (median)",
        "ideal speed-up",
    ):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r.storage,
            str(r.shards),
            str(r.slices),
            str(r.batch_size),
            f"{r.train_seconds:.2f}",
            f"{r.test_rmse:.4f}",
            f"{r.erasure_seconds_median:.3f}",
            f"{r.speedup:.1f}x",
            f"{r.ideal_speedup:.1f}x",
        )
    return table


def main(
    data: Path = typer.Option(..., help="MovieLens ratings (u.data or ml-100k.inter)"),
    shards: list[int] = typer.Option([4, 8], "--shards", help="S values (repeatable)"),
    slices: list[int] = typer.Option([1, 4, 8], "--slices", help="R values (repeatable)"),
    erasures: int = typer.Option(5, min=1, help="random subjects erased per configuration"),
    epochs: int = typer.Option(20, min=1),
    batch_size: int = typer.Option(512, min=1, help="batch of the monolithic model; SISA uses batch/S"),
    output: Path = typer.Option(Path("benchmark-results.json"), help="JSON results file"),
    seed: int = typer.Option(0),
    s3: str | None = typer.Option(
        "moto", help="S3 to compare erasure on: 'moto' (a loopback S3 server), an s3:// URI, or 'none'"
    ),
    s3_shards: int = typer.Option(8, help="S of the local-vs-S3 comparison"),
    s3_slices: int = typer.Option(4, help="R of the local-vs-S3 comparison"),
) -> None:
    """Measure SISA training, accuracy and erasure against the monolithic model in one run.

    Also `expunge benchmark erasure`; accuracy of every model family: `expunge benchmark accuracy`.
    """
    init_logging()
    logging.getLogger("orchestrator").setLevel(logging.WARNING)
    training = TrainingConfig(
        model=MFConfig(embedding_dim=32, l2=0.1), epochs=epochs, batch_size=batch_size, learning_rate=0.01
    )
    grid = [(1, 1)] + [(s, r) for s in shards for r in slices]
    s3_uri = None if s3 in (None, "none") else s3
    results = run(data, grid, training, erasures, seed, s3_uri, [(s3_shards, s3_slices)])
    Console().print(_table(results))
    output.write_text(
        json.dumps(
            {
                "data": str(data),
                "training": training.model_dump(mode="json"),
                "results": [r.model_dump() for r in results],
            },
            indent=1,
        )
    )
    Console().print(f"results written to {output}")


if __name__ == "__main__":
    typer.run(main)
