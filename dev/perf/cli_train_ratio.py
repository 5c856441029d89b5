"""Whole ``expunge train`` at S=8, R=8 against S=1, R=1: wall and CPU seconds, and their ratio (issue 22: at most 1.5x).

    .venv/bin/python dev/perf/cli_train_ratio.py /abs/ml-100k.inter [--runs 1]

MF (dim 32), MovieLens 100K read by the absolute path given, 80/20 split, 20 epochs, batch 512,
MLflow off, a fresh store each time. Each job is a fresh ``expunge train --config FILE`` process
(``expunge.pipelines.cli.main``, what the ``expunge`` console script runs) started from a scratch
folder, so that it imports ``expunge`` from ``PYTHONPATH`` (``dev/perf/side_by_side.py`` sets it to
a commit's tree); it starts and stops its own Ray cluster. CPU seconds are those of every process
that carries the job's environment (the job, its Ray cluster and Ray's workers, which inherit it),
read from ``/proc/PID/stat`` every 0.1 s until each exits (``getrusage(RUSAGE_CHILDREN)`` would miss
the workers, which the raylet does not wait for); the last 0.1 s of a process may be missed.
Prints one JSON object: each run's wall and CPU seconds per grid, their medians, the ratios of
the medians and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

GRIDS = {"1x1": (1, 1), "8x8": (8, 8)}
KEY = "3f9c2b7e1d8a4f6052c7e9b1a3d5f7082e4c6a8b0d2f4e6a8c0e2a4c6e8a0c2e"
CLI = "import sys; from expunge.pipelines.cli import main; sys.exit(main())"


def _config(data: str, shards: int, slices: int, store: Path) -> str:
    return (
        f"data: {{source: movielens, path: {json.dumps(data)}, test_fraction: 0.2, split_seed: 0}}\n"
        f"sharding: {{shards: {shards}, slices: {slices}, placement: balanced}}\n"
        "training:\n"
        "  model: {kind: mf, embedding_dim: 32}\n"
        "  epochs: 20\n"
        "  batch_size: 512\n"
        f"storage: {{uri: {json.dumps(str(store))}}}\n"
        "tracking: {enabled: false}\n"
    )


class _TaggedCpu:
    """CPU seconds of every process whose environment holds ``PERF_TAG=tag``, polled from /proc."""

    def __init__(self, tag: str) -> None:
        self._marker = f"PERF_TAG={tag}".encode()
        self._tagged: dict[int, float] = {}  # pid -> last CPU seconds seen
        self._untagged: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> _TaggedCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) in self._untagged:
                    continue
                pid = int(entry)
                try:
                    if pid not in self._tagged:
                        environ = Path(f"/proc/{pid}/environ").read_bytes()
                        if self._marker not in environ.split(b"\0"):
                            self._untagged.add(pid)
                            continue
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    self._tagged[pid] = (int(fields[11]) + int(fields[12])) / self._tick  # utime + stime
                except (FileNotFoundError, ProcessLookupError, PermissionError):
                    continue

    @property
    def seconds(self) -> float:
        return sum(self._tagged.values())

    @property
    def processes(self) -> int:
        return len(self._tagged)


def _train(folder: Path, data: str, shards: int, slices: int) -> dict[str, float | int]:
    folder.mkdir(parents=True)
    config = folder / "job.yaml"
    config.write_text(_config(data, shards, slices, folder / "store"))
    tag = uuid.uuid4().hex
    env = {**os.environ, "EXPUNGE_SUBJECT_KEY": KEY, "MLFLOW_DISABLE_TELEMETRY": "true", "PERF_TAG": tag}
    with _TaggedCpu(tag) as cpu:
        began = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", CLI, "train", "--config", str(config)],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - began
        time.sleep(0.5)  # Ray's processes outlive the job by a moment
    if done.returncode != 0:
        raise SystemExit(f"expunge train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu.seconds, 3), "processes": cpu.processes}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", help="absolute path of ml-100k.inter")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    data = str(Path(args.data).resolve())
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, float | int]]] = {grid: [] for grid in GRIDS}
    with tempfile.TemporaryDirectory(prefix="cli-train-ratio-") as scratch:
        for run in range(args.runs):
            for grid, (shards, slices) in GRIDS.items():  # alternated, so that load changes hit both alike
                runs[grid].append(_train(Path(scratch, f"{grid}-{run}"), data, shards, slices))
    median = {
        grid: {m: round(statistics.median(float(r[m]) for r in results), 3) for m in ("wall_s", "cpu_s")}
        for grid, results in runs.items()
    }
    print(
        json.dumps(
            {
                "runs": runs,
                "median": median,
                "ratio_wall": round(median["8x8"]["wall_s"] / median["1x1"]["wall_s"], 3),
                "ratio_cpu": round(median["8x8"]["cpu_s"] / median["1x1"]["cpu_s"], 3),
                "load_average": {
                    "before": [round(x, 2) for x in load_before],
                    "after": [round(x, 2) for x in os.getloadavg()],
                },
            }
        )
    )


if __name__ == "__main__":
    main()
