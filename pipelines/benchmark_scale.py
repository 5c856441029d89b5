"""Recipe: the scale benchmark. Training, erasure and memory from 10^5 to 10^7 rows, S in {8, 32}.

    expunge benchmark scale --sizes 100000,1000000 --shards 8,32 --out /tmp/expunge-scale

Synthetic ratings (``--rows-per-subject`` rows per subject) are written to Parquet in chunks,
never whole in memory, and trained with the streamed path (``Coordinator.train_stream``).
Each (size, S) runs in its own process, so the driver's peak RSS (``getrusage``) belongs to
that size alone; shard actors report theirs (``ShardActor.peak_rss_bytes``). Measured: training
time (whole ``train_stream``) and its parallel training phase (= a full SISA retrain), the
median one-subject erasure (retraining phase, as ``ErasureReceipt.speedup`` counts it), a
``--batch``-subject erasure, a monolithic retrain (S=1, R=1; sizes up to ``--monolith-max-rows``),
peak RSS of the driver and the largest shard actor, and bytes stored
(``orchestrator.storage_report``). Sizes not run are extrapolated from the largest measured
per-shard figures (time and actor memory per shard row). Timings are wall-clock on whatever
machine runs it: compare within one run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import typer
from pydantic import BaseModel, ConfigDict

__all__ = ["ScaleRow", "checks", "main", "measure", "synthetic_parquet"]

log = logging.getLogger(__name__)

_BENCH_KEY = "expunge-scale-benchmark-key-" + "0123456789abcdef" * 3  # synthetic subjects only


class ScaleRow(BaseModel):
    """One (rows, S, R) measurement; seconds are wall-clock, bytes are bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rows: int
    subjects: int
    shards: int
    slices: int
    model: str
    train_seconds: float  # whole train_stream: two passes, staging, shard training, commit
    full_retrain_seconds: float  # its parallel training phase: what a full SISA retrain costs
    erasure_seconds: float = 0.0  # median one-subject erasure, retraining phase
    erasure_total_seconds: float = 0.0  # median one-subject erasure, whole request
    batch_subjects: int = 0
    batch_shards_touched: int = 0
    batch_erasure_seconds: float = 0.0  # the batch's retraining phase
    monolith_seconds: float | None  # S=1, R=1 training phase on the same rows
    driver_peak_rss_bytes: int
    actor_peak_rss_bytes: int
    stored_bytes: int
    stored_bytes_per_row: float
    extrapolated: bool = False


def synthetic_parquet(
    path: Path, rows: int, rows_per_subject: int = 100, items: int = 1000, seed: int = 0, chunk_rows: int = 1 << 18
) -> Path:
    """Write ``rows`` synthetic ratings to ``path`` in chunks (memory: one chunk); reuse a complete file.

    Subject ``s%09d`` has ``rows_per_subject`` consecutive rows (the last one fewer), item ids
    are uniform in [0, items), ratings integers in [1, 5]; record ids ``r%010d``.
    """
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == rows:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    partial = path.with_suffix(".partial")
    writer: pq.ParquetWriter | None = None
    try:
        for start in range(0, rows, chunk_rows):
            n = min(chunk_rows, rows - start)
            index = np.arange(start, start + n)
            chunk = pa.table(
                {
                    "record_id": pa.array(np.char.add("r", np.char.zfill(index.astype(str), 10))),
                    "subject_id": pa.array(np.char.add("s", np.char.zfill((index // rows_per_subject).astype(str), 9))),
                    "item_id": pa.array(rng.integers(0, items, n, dtype=np.int64)),
                    "rating": pa.array(rng.integers(1, 6, n).astype(np.float32)),
                }
            )
            writer = writer or pq.ParquetWriter(partial, chunk.schema, compression="zstd")
            writer.write_table(chunk)
    finally:
        if writer is not None:
            writer.close()
    partial.rename(path)
    return path


def _peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def measure(
    data: Path,
    store: Path,
    shards: int,
    slices: int,
    model: str,
    epochs: int,
    batch_size: int,
    erasures: int,
    batch: int,
    rows_per_subject: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Train (streamed) and erase on one store; the figures of one (rows, S, R) point. Runs Ray."""
    import shutil

    import ray

    from orchestrator.config import ItemStatsConfig, JobConfig, MFConfig, ShardingConfig, TrainingConfig
    from orchestrator.coordinator import Coordinator
    from orchestrator.digests import SubjectHasher
    from orchestrator.staging import parquet_batches
    from orchestrator.storage_report import stored_bytes
    from pipelines._runtime import init_ray

    shutil.rmtree(store, ignore_errors=True)
    if not ray.is_initialized():
        init_ray()
    model_config = MFConfig(embedding_dim=8) if model == "mf" else ItemStatsConfig(factors=0)
    job = JobConfig(
        sharding=ShardingConfig(shards=shards, slices=slices),
        training=TrainingConfig(model=model_config, epochs=epochs, batch_size=batch_size, cpus_per_shard=1.0),
    )
    coordinator = Coordinator(str(store), SubjectHasher(_BENCH_KEY.encode()))
    began = time.perf_counter()
    trained = coordinator.train_stream(parquet_batches(str(data)), job, request_id="train", source=str(data))
    train_seconds = time.perf_counter() - began
    figures: dict[str, Any] = {
        "rows": trained.manifest.rows,
        "train_seconds": train_seconds,
        "full_retrain_seconds": trained.manifest.train_seconds,
    }
    # Subject ids follow synthetic_parquet's scheme, so none has to be read back into the driver.
    subjects = math.ceil(trained.manifest.rows / rows_per_subject)
    figures["subjects"] = subjects
    rng = np.random.default_rng(seed)
    picks = [f"s{i:09d}" for i in rng.choice(subjects, size=min(subjects, erasures + batch), replace=False)]
    if erasures:
        singles = [coordinator.forget([p], request_id=f"one-{n}") for n, p in enumerate(picks[:erasures])]
        figures["erasure_seconds"] = statistics.median(r.retrain_seconds or 0.0 for r in singles)
        figures["erasure_total_seconds"] = statistics.median(r.seconds for r in singles)
    if batch:
        receipt = coordinator.forget(picks[erasures:], request_id="batch")
        figures["batch_subjects"] = batch
        figures["batch_shards_touched"] = len(receipt.affected_shards)
        figures["batch_erasure_seconds"] = receipt.retrain_seconds or 0.0
    assert coordinator.manifest is not None
    report = stored_bytes(coordinator.store, coordinator.manifest, coordinator.catalog)
    figures["stored_bytes"] = report.total_bytes
    figures["stored_bytes_per_row"] = report.bytes_per_row
    peaks = coordinator.pool.call("peak_rss_bytes", {s: () for s in range(shards)})
    figures["actor_peak_rss_bytes"] = max(peaks.values())
    figures["driver_peak_rss_bytes"] = _peak_rss_bytes()
    coordinator.close()
    shutil.rmtree(store, ignore_errors=True)
    return figures


def _child(args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``measure`` in a fresh process (its own peak RSS); it writes its figures to a JSON file."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="expunge-scale-") as folder:
        result = Path(folder) / "figures.json"
        command = [sys.executable, "-m", "pipelines.benchmark_scale", "--measure", str(result), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0 or not result.exists():
            raise RuntimeError(f"measurement {' '.join(args)} failed:\n{done.stderr[-4000:]}")
        return dict(json.loads(result.read_text()))


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x) (nan with fewer than two distinct x)."""
    if len(set(xs)) < 2:
        return math.nan
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def checks(rows: list[ScaleRow]) -> dict[str, bool | None]:
    """The issue's three checks on measured rows (None: not enough points to say)."""
    measured = [r for r in rows if not r.extrapolated]
    sizes = sorted({r.rows for r in measured})
    # One-subject erasure follows rows/S: at each size, more shards is faster.
    faster = []
    for n in sizes:
        at_size = sorted((r for r in measured if r.rows == n), key=lambda r: r.shards)
        if len(at_size) > 1:  # the most shards (fewest rows per shard) erase fastest
            faster.append(at_size[-1].erasure_seconds < at_size[0].erasure_seconds)
    follows = all(faster) if faster else None
    batch = [r.batch_erasure_seconds <= 1.1 * r.full_retrain_seconds for r in measured if r.batch_subjects]
    drivers = [r.driver_peak_rss_bytes for r in measured]
    flat = (max(drivers) <= 1.25 * min(drivers)) if len(sizes) > 1 else None
    return {
        "erasure_follows_rows_per_shard": follows,
        "batch_within_1.1x_full_retrain": all(batch) if batch else None,
        "driver_memory_flat": flat,
    }


def extrapolate(rows: list[ScaleRow], size: int, shards: int, rows_per_subject: int) -> ScaleRow | None:
    """A row for ``size`` rows from the largest measured size with the same S, scaled by rows per shard.

    Time and actor memory above the smallest measured point are taken as proportional to
    rows/S (what one shard holds and retrains); the driver's memory and bytes per row as
    constant. Bounded below by the measured point itself.
    """
    same = sorted((r for r in rows if r.shards == shards and not r.extrapolated), key=lambda r: r.rows)
    if not same:
        return None
    top, low = same[-1], same[0]
    factor = size / top.rows

    def grown(high: float, base: float) -> float:
        # One measured size cannot separate the fixed part (interpreter, torch) from the part
        # that grows: report the measured figure (a lower bound) rather than scale the fixed part.
        return base + (high - base) * (size - low.rows) / (top.rows - low.rows) if top.rows > low.rows else high

    return top.model_copy(
        update={
            "rows": size,
            "subjects": math.ceil(size / rows_per_subject),
            "train_seconds": top.train_seconds * factor,
            "full_retrain_seconds": top.full_retrain_seconds * factor,
            "erasure_seconds": top.erasure_seconds * factor,
            "erasure_total_seconds": top.erasure_total_seconds * factor,
            "batch_erasure_seconds": top.batch_erasure_seconds * factor,
            "monolith_seconds": top.monolith_seconds * factor if top.monolith_seconds else None,
            "actor_peak_rss_bytes": int(grown(top.actor_peak_rss_bytes, low.actor_peak_rss_bytes)),
            "stored_bytes": int(top.stored_bytes_per_row * size),
            "extrapolated": True,
        }
    )


def _charts(rows: list[ScaleRow], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, series in (
        ("erasure_time_vs_rows.png", [("erasure_seconds", "one subject"), ("batch_erasure_seconds", "batch")]),
        ("memory_vs_rows.png", [("driver_peak_rss_bytes", "driver"), ("actor_peak_rss_bytes", "largest actor")]),
    ):
        figure, axes = plt.subplots(figsize=(6, 4))
        for shards in sorted({r.shards for r in rows}):
            points = sorted((r for r in rows if r.shards == shards), key=lambda r: r.rows)
            for field, label in series:
                scale = 2**20 if field.endswith("bytes") else 1
                xs = [r.rows for r in points]
                ys = [getattr(r, field) / scale for r in points]
                style = "--" if any(r.extrapolated for r in points) else "-"
                axes.plot(xs, ys, style, marker="o", label=f"S={shards}, {label}")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("training rows (dashed: includes extrapolated points)")
        axes.set_ylabel("MiB (peak RSS)" if "memory" in name else "seconds (retraining phase)")
        axes.legend(fontsize=7)
        axes.grid(True, which="both", alpha=0.3)
        figure.tight_layout()
        figure.savefig(out / name, dpi=120)
        plt.close(figure)
        paths.append(str(out / name))
    return paths


def _table(rows: list[ScaleRow]) -> str:
    head = (
        "| rows | S | train s | full SISA s | mono s | 1-subj s | batch s (shards) | driver MiB | actor MiB | B/row |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        mark = "~" if r.extrapolated else ""
        mono = f"{r.monolith_seconds:.1f}" if r.monolith_seconds is not None else "-"
        lines.append(
            f"| {mark}{r.rows:.0e} | {r.shards} | {r.train_seconds:.1f} | {r.full_retrain_seconds:.1f} | {mono} | "
            f"{r.erasure_seconds:.2f} | {r.batch_erasure_seconds:.1f} ({r.batch_shards_touched}) | "
            f"{r.driver_peak_rss_bytes / 2**20:.0f} | {r.actor_peak_rss_bytes / 2**20:.0f} | {r.stored_bytes_per_row:.0f} |"
        )
    return "\n".join(lines)


def run(
    sizes: list[int],
    shard_counts: list[int],
    slices: int,
    model: str,
    epochs: int,
    batch_size: int,
    erasures: int,
    batch: int,
    rows_per_subject: int,
    items: int,
    out: Path,
    extrapolate_to: list[int],
    monolith_max_rows: int,
    timeout: float,
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    rows: list[ScaleRow] = []
    for size in sizes:
        data = synthetic_parquet(out / f"ratings-{size}.parquet", size, rows_per_subject, items)
        monolith = None
        if size <= monolith_max_rows:
            mono = [str(data), str(out / "store-mono"), "1", "1", model, str(epochs), str(batch_size), "0", "0"]
            monolith = _child([*mono, str(rows_per_subject)], timeout)["full_retrain_seconds"]
        for shards in shard_counts:
            args = [str(data), str(out / f"store-{shards}"), str(shards), str(slices), model, str(epochs)]
            figures = _child([*args, str(batch_size), str(erasures), str(batch), str(rows_per_subject)], timeout)
            rows.append(ScaleRow(shards=shards, slices=slices, model=model, monolith_seconds=monolith, **figures))
            log.info("%s", rows[-1].model_dump_json())
            with (out / "points.jsonl").open("a") as points:  # kept if a later, larger point fails
                points.write(rows[-1].model_dump_json() + "\n")
    for size in extrapolate_to:
        for shards in shard_counts:
            if not any(r.rows == size and r.shards == shards for r in rows):
                guess = extrapolate(rows, size, shards, rows_per_subject)
                if guess is not None:
                    rows.append(guess)
    rows.sort(key=lambda r: (r.shards, r.rows))
    result = {
        "rows": [r.model_dump() for r in rows],
        "checks": checks(rows),
        "slopes": {
            f"S={s}": {
                "erasure_vs_rows": _slope(
                    [r.rows for r in rows if r.shards == s and not r.extrapolated],
                    [r.erasure_seconds for r in rows if r.shards == s and not r.extrapolated],
                )
            }
            for s in shard_counts
        },
        "charts": _charts(rows, out),
        "table": _table(rows),
    }
    (out / "scale.json").write_text(json.dumps(result, indent=1))
    return result


def _ints(text: str) -> list[int]:
    return [int(float(t)) for t in text.split(",") if t.strip()]


def main(
    sizes: str = typer.Option("100000,1000000", help="training rows per point, comma-separated (1e7 allowed)"),
    shards: str = typer.Option("8,32", help="shard counts S, comma-separated"),
    slices: int = typer.Option(8, help="slices per shard R"),
    model: str = typer.Option("mf", help="mf (matrix factorisation) or item_stats"),
    epochs: int = typer.Option(1, help="epoch budget (full-shard epochs)"),
    batch_size: int = typer.Option(4096, help="rows per optimiser step"),
    erasures: int = typer.Option(3, help="one-subject erasures per point (median reported)"),
    batch: int = typer.Option(100, help="subjects in the batch erasure (0: none)"),
    rows_per_subject: int = typer.Option(100, help="rows of each synthetic subject"),
    items: int = typer.Option(1000, help="item catalogue size"),
    out: Path = typer.Option(Path("/tmp/expunge-scale"), help="folder for data, stores, scale.json and charts"),
    extrapolate_to: str = typer.Option("10000000", help="sizes to extrapolate when not measured"),
    monolith_max_rows: int = typer.Option(1_000_000, help="largest size with a monolithic (S=1, R=1) retrain"),
    timeout: float = typer.Option(3600.0, help="seconds allowed for one measurement"),
    json_output: bool = typer.Option(False, "--json", help="print the JSON result instead of the table"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Scale benchmark: training, erasure, memory and bytes stored against rows and S (streamed input)."""
    from pipelines._runtime import init_logging

    init_logging(verbose)
    if model not in ("mf", "item_stats"):
        raise typer.BadParameter("--model must be mf or item_stats")
    result = run(
        _ints(sizes),
        _ints(shards),
        slices,
        model,
        epochs,
        batch_size,
        erasures,
        batch,
        rows_per_subject,
        items,
        out,
        _ints(extrapolate_to),
        monolith_max_rows,
        timeout,
    )
    if json_output:
        typer.echo(json.dumps(result))
        return
    typer.echo(result["table"])
    typer.echo(f"checks: {json.dumps(result['checks'])}")
    typer.echo(f"slopes: {json.dumps(result['slopes'])}")
    typer.echo(f"charts: {' '.join(result['charts'])}; JSON: {out / 'scale.json'}")


def _measure_main() -> None:
    result, data, store, shards, slices, model, epochs, batch_size, erasures, batch, per_subject = sys.argv[2:13]
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    figures = measure(
        Path(data),
        Path(store),
        int(shards),
        int(slices),
        model,
        int(epochs),
        int(batch_size),
        int(erasures),
        int(batch),
        int(per_subject),
    )
    Path(result).write_text(json.dumps(figures))  # stdout is Ray's and the libraries': the parent reads this file


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        _measure_main()
    else:
        typer.run(main)
