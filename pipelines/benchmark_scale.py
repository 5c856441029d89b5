"""Recipe: the scale benchmark. Training, erasure and memory from 10^5 to 10^7 rows, S in {8, 32}.

    expunge benchmark scale --sizes 100000,1000000 --shards 8,32 --output /tmp/expunge-scale

Synthetic ratings (``--rows-per-subject`` rows per subject) are written to Parquet in chunks,
never whole in memory, and trained with the streamed path (``Coordinator.train_stream``).
Each (size, S) runs in its own process, so the driver's peak RSS (``getrusage``) belongs to
that size alone; shard actors report theirs (``ShardActor.peak_rss_bytes``). Measured: training
time (whole ``train_stream``) and its parallel training phase (= a full SISA retrain), the
median one-subject erasure (retraining phase, as ``ErasureReceipt.speedup`` counts it), a
``--batch``-subject erasure, a monolithic retrain (S=1, R=1; sizes up to ``--monolith-max-rows``),
peak RSS of the driver and the largest shard actor, and bytes stored
(``expunge.orchestrator.evidence.storage_report``). Sizes not run are extrapolated from the largest measured
size with the same S (``extrapolate``, method in ``EXTRAPOLATION``), with what one shard actor
would need there (``shard_needs``). Timings are wall-clock on whatever machine runs it:
compare within one run. Docs: docs/scale.md.
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
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import typer
from pydantic import BaseModel, ConfigDict

__all__ = [
    "EXTRAPOLATION",
    "Check",
    "ScaleRow",
    "ScaleSettings",
    "ShardNeeds",
    "Slope",
    "checks",
    "erasure_slope",
    "extrapolate",
    "main",
    "measure",
    "monolith_note",
    "report",
    "run",
    "shard_needs",
    "synthetic_parquet",
]

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

    from expunge.orchestrator.config import ItemStatsConfig, JobConfig, MFConfig, ShardingConfig, TrainingConfig
    from expunge.orchestrator.coordinator import Coordinator
    from expunge.orchestrator.digests import SubjectHasher
    from expunge.orchestrator.evidence.storage_report import stored_bytes
    from expunge.orchestrator.training.streaming import parquet_batches
    from expunge.pipelines._runtime import init_ray

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
        command = [sys.executable, "-m", "expunge.pipelines.benchmark_scale", "--measure", str(result), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0 or not result.exists():
            raise RuntimeError(f"measurement {' '.join(args)} failed:\n{done.stderr[-4000:]}")
        return dict(json.loads(result.read_text()))


#: Why a check or a slope has no value (recorded in the JSON, printed on stderr).
NEEDS_TWO_SIZES = "undecided: needs two or more measured sizes"
NEEDS_TWO_SHARD_COUNTS = "undecided: needs two or more shard counts measured at one size"
NEEDS_BATCH = "undecided: needs a measured batch erasure (--batch above 0)"


class Check(BaseModel):
    """One of the issue's checks: ``passed`` is None when the measured points cannot decide it; ``detail`` says why."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    passed: bool | None
    detail: str


class Slope(BaseModel):
    """Log-log slope of one-subject erasure time against rows at one S (1.0: proportional); None with ``detail``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    erasure_vs_rows: float | None
    detail: str


def erasure_slope(rows: list[ScaleRow], shards: int) -> Slope:
    """Least-squares slope of log(one-subject erasure seconds) against log(rows), measured rows with ``shards``."""
    points = [(r.rows, r.erasure_seconds) for r in rows if r.shards == shards and not r.extrapolated]
    if len({n for n, _ in points}) < 2:
        return Slope(erasure_vs_rows=None, detail=NEEDS_TWO_SIZES)
    if any(seconds <= 0 for _, seconds in points):
        return Slope(erasure_vs_rows=None, detail="undecided: a measured erasure time is 0 (--erasures 0?)")
    slope = float(np.polyfit(np.log([n for n, _ in points]), np.log([s for _, s in points]), 1)[0])
    return Slope(erasure_vs_rows=slope, detail=f"from {len(points)} measured sizes (1.0: proportional to rows)")


def checks(rows: list[ScaleRow]) -> dict[str, Check]:
    """The issue's three checks on the measured rows (extrapolated ones never count).

    ``erasure_follows_rows_per_shard``: at every size measured with two or more S, the most
    shards (fewest rows per shard) erase one subject faster than the fewest.
    ``batch_within_1.1x_full_retrain``: every batch erasure's retraining phase is at most 1.1x
    the full SISA retrain of its point. ``driver_memory_flat``: the driver's peak RSS varies by
    at most 25% across measured sizes.
    """
    measured = [r for r in rows if not r.extrapolated]
    sizes = sorted({r.rows for r in measured})
    comparisons = []
    for n in sizes:
        at_size = sorted((r for r in measured if r.rows == n), key=lambda r: r.shards)
        if len(at_size) > 1:
            few, many = at_size[0], at_size[-1]
            comparisons.append(
                (
                    many.erasure_seconds < few.erasure_seconds,
                    f"{n:.0e} rows: S={many.shards} {many.erasure_seconds:.3f} s, S={few.shards} {few.erasure_seconds:.3f} s",
                )
            )
    follows = (
        Check(passed=all(ok for ok, _ in comparisons), detail="; ".join(text for _, text in comparisons))
        if comparisons
        else Check(passed=None, detail=NEEDS_TWO_SHARD_COUNTS)
    )
    batched = [r for r in measured if r.batch_subjects]
    batch = (
        Check(
            passed=all(r.batch_erasure_seconds <= 1.1 * r.full_retrain_seconds for r in batched),
            detail="; ".join(
                f"{r.rows:.0e} rows, S={r.shards}: {r.batch_erasure_seconds / r.full_retrain_seconds:.2f}x"
                for r in batched
                if r.full_retrain_seconds > 0
            ),
        )
        if batched
        else Check(passed=None, detail=NEEDS_BATCH)
    )
    if len(sizes) > 1:
        drivers = [r.driver_peak_rss_bytes for r in measured]
        flat = Check(
            passed=max(drivers) <= 1.25 * min(drivers),
            detail=f"driver peak RSS {min(drivers) / 2**20:.0f} to {max(drivers) / 2**20:.0f} MiB (limit: +25%)",
        )
    else:
        flat = Check(passed=None, detail=NEEDS_TWO_SIZES)
    return {
        "erasure_follows_rows_per_shard": follows,
        "batch_within_1.1x_full_retrain": batch,
        "driver_memory_flat": flat,
    }


#: How ``extrapolate`` makes a row for a size that was not run (printed and written to the JSON).
EXTRAPOLATION = (
    "Extrapolated rows (~) were not run. Times (training, full SISA retrain, one-subject and batch "
    "erasure) are the largest measured size's with the same S, scaled linearly in rows per shard (rows/S); "
    "fixed overheads (imports, Ray, actor start, slice reads, commits) are not removed, so they scale too: "
    "read them as upper-bound estimates. Shard-actor peak RSS is linear in rows through the smallest and "
    "largest measured sizes with the same S (the fixed part, interpreter and torch, counted once); with one "
    "measured size it is that size's figure (a lower bound). Driver RSS and bytes per row are the largest "
    "measured size's (streamed input keeps the driver flat)."
)


def extrapolate(rows: list[ScaleRow], size: int, shards: int, rows_per_subject: int) -> ScaleRow | None:
    """A row for ``size`` rows from the largest measured size with the same S (method: ``EXTRAPOLATION``).

    The monolith is scaled linearly in rows from that size too, also beyond ``--monolith-max-rows``
    (``monolith_note`` says so). None when no row with ``shards`` was measured.
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


def monolith_note(rows: list[ScaleRow], monolith_max_rows: int) -> str | None:
    """Says which monolith figures are extrapolated past ``monolith_max_rows`` (None when none is)."""
    beyond = sorted({r.rows for r in rows if r.extrapolated and r.monolith_seconds is not None})
    beyond = [n for n in beyond if n > monolith_max_rows]
    if not beyond:
        return None
    largest = max((r.rows for r in rows if not r.extrapolated and r.monolith_seconds is not None), default=0)
    return (
        f"The monolith (S=1, R=1) was run up to {largest:.0e} rows (--monolith-max-rows {monolith_max_rows}); "
        f"its figure at {', '.join(f'{n:.0e}' for n in beyond)} rows is that time scaled linearly in rows, "
        "beyond what was run: an estimate, not a measurement."
    )


class ShardNeeds(BaseModel):
    """What one shard actor needs at an extrapolated size, and whether all S fit this machine.

    Bytes are peak RSS (an upper bound on what the actors need together: shared library pages
    count in each); seconds are wall-clock estimates. ``shard_train_seconds`` is one shard's
    share of the parallel training phase if it had one CPU to itself: the phase ran S actors on
    ``machine_cpus`` CPUs, so a shard got about phase x min(S, CPUs) / S CPU-seconds.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    rows: int
    shards: int
    rows_per_shard: int
    actor_peak_rss_bytes: int
    all_actors_and_driver_bytes: int
    shard_train_seconds: float
    erasure_seconds: float
    train_seconds_here: float
    machine_cpus: int
    machine_memory_bytes: int
    fits_memory_here: bool
    summary: str


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def shard_needs(row: ScaleRow, cpus: int, memory_bytes: int) -> ShardNeeds:
    """Pure: per-shard memory and time of ``row`` (normally an extrapolated one) and whether it fits here."""
    per_shard = math.ceil(row.rows / row.shards)
    together = row.shards * row.actor_peak_rss_bytes + row.driver_peak_rss_bytes
    shard_seconds = row.full_retrain_seconds * min(row.shards, cpus) / row.shards
    fits = together <= memory_bytes
    bound = (
        f"memory bounds it: {row.shards} actors x {row.actor_peak_rss_bytes / 2**30:.2f} GiB + driver = "
        f"{together / 2**30:.1f} GiB, more than this machine's {memory_bytes / 2**30:.1f} GiB"
        if not fits
        else f"fits this machine's {memory_bytes / 2**30:.1f} GiB ({together / 2**30:.1f} GiB together); "
        f"time is its cost: ~{_duration(row.train_seconds)} to train on {cpus} CPUs"
    )
    summary = (
        f"S={row.shards} at {row.rows:.0e} rows ({per_shard:,} per shard): a cluster needs {row.shards} shard actors "
        f"of ~{row.actor_peak_rss_bytes / 2**30:.2f} GiB peak RSS and one CPU each, ~{shard_seconds:.0f} s of "
        f"training per shard; one-subject erasure ~{row.erasure_seconds:.1f} s. Here: {bound}."
    )
    return ShardNeeds(
        rows=row.rows,
        shards=row.shards,
        rows_per_shard=per_shard,
        actor_peak_rss_bytes=row.actor_peak_rss_bytes,
        all_actors_and_driver_bytes=together,
        shard_train_seconds=shard_seconds,
        erasure_seconds=row.erasure_seconds,
        train_seconds_here=row.train_seconds,
        machine_cpus=cpus,
        machine_memory_bytes=memory_bytes,
        fits_memory_here=fits,
        summary=summary,
    )


def _machine() -> tuple[int, int]:
    """CPUs a local Ray cluster gets here (``init_ray``) and physical memory in bytes."""
    return os.cpu_count() or 1, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


#: The two charts: file name, title and the (field, label) series drawn for every S.
_CHARTS = {
    "erasure_time_vs_rows.png": (
        "Erasure time against training rows (retraining phase)",
        (("erasure_seconds", "one subject"), ("batch_erasure_seconds", "batch")),
    ),
    "memory_vs_rows.png": (
        "Peak memory (RSS) against training rows",
        (("driver_peak_rss_bytes", "driver"), ("actor_peak_rss_bytes", "largest shard actor")),
    ),
}


def _figure(rows: list[ScaleRow], name: str) -> Any:
    """One chart of ``_CHARTS`` as a matplotlib Figure: measured points filled on solid lines, extrapolated hollow.

    Rows on a log x axis; erasure seconds on a log y axis, memory in MiB on a linear y axis from 0.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    title, series = _CHARTS[name]
    memory = name.startswith("memory")
    scale = 2**20 if memory else 1
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    handles = []
    lines = [(s, field, label) for s in sorted({r.shards for r in rows}) for field, label in series]
    for colour, (shards, field, label) in zip(colours * 4, lines, strict=False):
        points = sorted((r for r in rows if r.shards == shards), key=lambda r: r.rows)
        measured = [(r.rows, getattr(r, field) / scale) for r in points if not r.extrapolated]
        guessed = [(r.rows, getattr(r, field) / scale) for r in points if r.extrapolated]
        if measured:
            axes.plot(*zip(*measured, strict=True), "-", marker="o", color=colour)
        if guessed:
            axes.plot(*zip(*(measured[-1:] + guessed), strict=True), "--", color=colour)
            axes.plot(*zip(*guessed, strict=True), "o", color=colour, markerfacecolor="none")
        handles.append(Line2D([], [], color=colour, marker="o", label=f"S={shards}, {label}"))
    handles += [
        Line2D([], [], color="grey", marker="o", linestyle="-", label="measured (filled)"),
        Line2D([], [], color="grey", marker="o", markerfacecolor="none", linestyle="--", label="extrapolated, not run (hollow)"),
    ]  # fmt: skip
    axes.set_xscale("log")
    if memory:
        top = max(getattr(r, field) for r in rows for field, _ in series) / scale
        axes.set_ylim(bottom=0, top=top * 1.15)
        axes.set_ylabel("MiB (peak RSS)")
    else:
        axes.set_yscale("log")
        axes.set_ylabel("seconds (retraining phase)")
    axes.set_xlabel("training rows")
    axes.set_title(title)
    axes.legend(handles=handles, fontsize=7)
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    return figure


def _charts(rows: list[ScaleRow], out: Path) -> list[str]:
    """Writes both charts of ``_CHARTS`` as PNGs into ``out``; returns their paths."""
    import matplotlib.pyplot as plt

    paths = []
    for name in _CHARTS:
        figure = _figure(rows, name)
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


class ScaleSettings(BaseModel):
    """What one scale run measures (the CLI's options). Rows and subjects are counts, seconds wall-clock."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sizes: list[int]
    shard_counts: list[int]
    slices: int = 8
    model: Literal["mf", "item_stats"] = "mf"
    epochs: int = 1
    batch_size: int = 4096
    erasures: int = 3
    batch: int = 100
    rows_per_subject: int = 100
    items: int = 1000
    output: Path = Path("/tmp/expunge-scale")
    extrapolate_to: list[int] = [10_000_000]
    monolith_max_rows: int = 1_000_000
    timeout: float = 3600.0


def report(
    rows: list[ScaleRow], settings: ScaleSettings, cpus: int, memory_bytes: int, charts: list[str]
) -> dict[str, Any]:
    """Pure: the JSON result of measured ``rows`` (extrapolated rows added, checks, slopes, shard needs, notes).

    Every float is finite or None: ``json.dumps(report(...), allow_nan=False)`` holds.
    """
    rows = list(rows)
    for size in settings.extrapolate_to:
        for shards in settings.shard_counts:
            if not any(r.rows == size and r.shards == shards for r in rows):
                guess = extrapolate(rows, size, shards, settings.rows_per_subject)
                if guess is not None:
                    rows.append(guess)
    rows.sort(key=lambda r: (r.shards, r.rows))
    notes = [EXTRAPOLATION] if any(r.extrapolated for r in rows) else []
    monolith = monolith_note(rows, settings.monolith_max_rows)
    notes += [monolith] if monolith else []
    return {
        "settings": settings.model_dump(mode="json"),
        "machine": {"cpus": cpus, "memory_bytes": memory_bytes},
        "rows": [r.model_dump() for r in rows],
        "checks": {name: check.model_dump() for name, check in checks(rows).items()},
        "slopes": {f"S={s}": erasure_slope(rows, s).model_dump() for s in settings.shard_counts},
        "extrapolation": notes,
        "shard_needs": [shard_needs(r, cpus, memory_bytes).model_dump() for r in rows if r.extrapolated],
        "charts": charts,
        "table": _table(rows),
    }


def run(settings: ScaleSettings, console: Any = None) -> dict[str, Any]:
    """Measure every (size, S) of ``settings`` (and the monolith up to its limit), each in its own process.

    Progress lines go to ``console`` (a rich Console on stderr; None: silent). Writes
    ``scale.json``, the charts and ``points.jsonl`` (each measured point as it finishes) to
    ``settings.output``; returns the JSON result (``report``). Raises RuntimeError when a
    measurement process fails (its stderr tail in the message).
    """
    out = settings.output
    out.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        if console is not None:
            console.print(text, highlight=False)

    plan = [(n, 1) for n in settings.sizes if n <= settings.monolith_max_rows]
    plan = sorted(plan + [(n, s) for n in settings.sizes for s in settings.shard_counts])
    rows: list[ScaleRow] = []
    monoliths: dict[int, float] = {}
    for step, (size, shards) in enumerate(plan, 1):
        data = synthetic_parquet(out / f"ratings-{size}.parquet", size, settings.rows_per_subject, settings.items)
        what = f"[{step}/{len(plan)}] {size:.0e} rows, " + ("monolith S=1 R=1" if shards == 1 else f"S={shards}")
        say(f"▶ {what}: started")
        began = time.perf_counter()
        slices, erasures, batch = (1, 0, 0) if shards == 1 else (settings.slices, settings.erasures, settings.batch)
        args = [str(data), str(out / f"store-{shards}"), str(shards), str(slices), settings.model, str(settings.epochs)]
        args += [str(settings.batch_size), str(erasures), str(batch), str(settings.rows_per_subject)]
        figures = _child(args, settings.timeout)
        took = time.perf_counter() - began
        if shards == 1:
            monoliths[size] = figures["full_retrain_seconds"]
            say(f"✓ {what}: done in {took:.0f} s (training phase {monoliths[size]:.1f} s)")
            continue
        row = ScaleRow(
            shards=shards, slices=slices, model=settings.model, monolith_seconds=monoliths.get(size), **figures
        )
        rows.append(row)
        say(
            f"✓ {what}: done in {took:.0f} s (train {row.train_seconds:.1f} s, one subject {row.erasure_seconds:.2f} s, "
            f"batch {row.batch_erasure_seconds:.1f} s, actor {row.actor_peak_rss_bytes / 2**20:.0f} MiB)"
        )
        with (out / "points.jsonl").open("a") as points:  # kept if a later, larger point fails
            points.write(row.model_dump_json() + "\n")
    cpus, memory_bytes = _machine()
    result = report(rows, settings, cpus, memory_bytes, [])
    result["charts"] = _charts([ScaleRow(**r) for r in result["rows"]], out)
    (out / "scale.json").write_text(json.dumps(result, indent=1, allow_nan=False))
    return result


def _ints(values: list[str], option: str) -> list[int]:
    """Values of a list option: repeatable, each value one number or a comma list (``1e7`` allowed)."""
    numbers = []
    for text in (t.strip() for value in values for t in value.split(",")):
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number == int(number) and number >= 1):
            raise typer.BadParameter(f"{option} {text!r}: give whole numbers >= 1, e.g. {option} 8,32 or 1e7")
        numbers.append(int(number))
    return numbers


def main(
    sizes: list[str] = typer.Option(
        ["100000,1000000"], "--sizes", metavar="N[,N...]", help="training rows per point (1e7 allowed)"
    ),
    shards: list[str] = typer.Option(["8,32"], "--shards", metavar="S[,S...]", help="shard counts S"),
    slices: int = typer.Option(8, min=1, help="slices per shard R"),
    model: str = typer.Option("mf", help="mf (matrix factorisation) or item_stats"),
    epochs: int = typer.Option(1, min=1, help="epoch budget (full-shard epochs)"),
    batch_size: int = typer.Option(4096, min=1, help="rows per optimiser step"),
    erasures: int = typer.Option(3, min=0, help="one-subject erasures per point (median reported)"),
    batch: int = typer.Option(100, min=0, help="subjects in the batch erasure (0: none)"),
    rows_per_subject: int = typer.Option(100, min=1, help="rows of each synthetic subject"),
    items: int = typer.Option(1000, min=1, help="item catalogue size"),
    output: Path = typer.Option(
        Path("/tmp/expunge-scale"), help="folder for data, stores, scale.json, points.jsonl and the two PNG charts"
    ),
    extrapolate_to: list[str] = typer.Option(
        ["10000000"], "--extrapolate-to", help="sizes to extrapolate when not run"
    ),
    monolith_max_rows: int = typer.Option(1_000_000, help="largest size with a monolithic (S=1, R=1) retrain"),
    timeout: float = typer.Option(3600.0, help="seconds allowed for one measurement"),
    json_output: bool = typer.Option(False, "--json", help="print the JSON result instead of the table"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Scale benchmark: training, erasure, memory and bytes stored against rows and S.

    List options (--sizes, --shards, --extrapolate-to) are repeatable and a value
    may be a comma list: `--shards 8 --shards 32` is `--shards 8,32` (the same in
    `expunge benchmark erasure`). Results go to stdout, progress and undecided
    checks to stderr, and all of it to OUTPUT/scale.json. Docs: docs/scale.md.
    """
    from rich.console import Console

    from expunge.pipelines._runtime import init_logging

    init_logging(verbose)
    if model not in ("mf", "item_stats"):
        raise typer.BadParameter("--model must be mf or item_stats")
    settings = ScaleSettings(
        sizes=_ints(sizes, "--sizes"),
        shard_counts=_ints(shards, "--shards"),
        slices=slices,
        model="mf" if model == "mf" else "item_stats",
        epochs=epochs,
        batch_size=batch_size,
        erasures=erasures,
        batch=batch,
        rows_per_subject=rows_per_subject,
        items=items,
        output=output,
        extrapolate_to=_ints(extrapolate_to, "--extrapolate-to"),
        monolith_max_rows=monolith_max_rows,
        timeout=timeout,
    )
    stderr = Console(stderr=True)
    result = run(settings, stderr)
    for name, check in result["checks"].items():
        if check["passed"] is None:
            stderr.print(f"check {name}: {check['detail']}", highlight=False)
    for shard_count, slope in result["slopes"].items():
        if slope["erasure_vs_rows"] is None:
            stderr.print(f"slope {shard_count}: {slope['detail']}", highlight=False)
    if json_output:
        typer.echo(json.dumps(result, allow_nan=False))
        return
    typer.echo(result["table"])
    for name, check in result["checks"].items():
        typer.echo(f"check {name}: {check['passed']} ({check['detail']})")
    for shard_count, slope in result["slopes"].items():
        typer.echo(f"slope of erasure time against rows, {shard_count}: {slope['erasure_vs_rows']} ({slope['detail']})")
    for note in result["extrapolation"]:
        typer.echo(note)
    for needs in result["shard_needs"]:
        typer.echo(needs["summary"])
    typer.echo(f"charts: {' '.join(result['charts'])}; JSON: {output / 'scale.json'}")


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
