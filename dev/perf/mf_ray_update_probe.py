"""Where a shard's ``update`` spends its CPU under Ray: per-thread CPU of the worker process, and a cProfile.

    .venv/bin/python dev/perf/mf_ray_update_probe.py /abs/ml-100k.inter [--grid 16x8] [--erasures 5]
        [--profile-dir DIR]

Runs the benchmark's measurement (``expunge.pipelines.benchmark._measure``: train on Ray, then
``--erasures`` random subjects forgotten) for the monolith and each grid, with a Ray worker set-up
hook (nothing in the library changes) that wraps ``Shard.update`` in every worker and records, per
call: ``ShardUpdate.cpu_seconds`` (what the benchmark counts: ``time.process_time`` inside
``update``), the CPU of the thread that ran it (``time.thread_time``), the CPU every other thread
of the process ran meanwhile (``/proc/self/task/*/schedstat``, by thread name), and the process's
torch and scheduling settings. ``--profile-dir``: a cProfile (thread CPU time) of each worker's
updates, ``<pid>.prof``, instead of the thread figures (profiling inflates ``cpu_seconds``).
Prints one JSON object: per grid, each update's record and their means.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

RECORDS_ENV = "EXPUNGE_PROBE_RECORDS"
PROFILE_ENV = "EXPUNGE_PROBE_PROFILE_DIR"


def _hook() -> None:  # runs in every Ray worker process (runtime_env worker_process_setup_hook)
    import cProfile
    import os
    import time

    from expunge.shards.shard import Shard

    records = os.environ[RECORDS_ENV]
    profile_dir = os.environ.get(PROFILE_ENV)
    profile = cProfile.Profile(time.thread_time) if profile_dir else None
    original = Shard.update

    def threads() -> dict[str, tuple[str, int]]:
        out = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/schedstat") as f:
                    ns = int(f.read().split()[0])
                with open(f"/proc/self/task/{tid}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            out[tid] = (name, ns)
        return out

    def settings() -> dict[str, Any]:
        import torch

        return {
            "torch_threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "niceness": os.getpriority(os.PRIO_PROCESS, 0),
            "env": {k: v for k, v in os.environ.items() if k.endswith("_NUM_THREADS") or k.startswith("MALLOC")},
            "affinity": sorted(os.sched_getaffinity(0)),
        }

    def update(self: Shard, *args: Any, **kwargs: Any) -> Any:
        main = str(__import__("threading").get_native_id())
        before = threads() if profile is None else {}
        thread0 = time.thread_time()
        if profile is not None:
            profile.enable()
        result = original(self, *args, **kwargs)
        if profile is not None:
            profile.disable()
            profile.dump_stats(f"{profile_dir}/{os.getpid()}.prof")
        thread = time.thread_time() - thread0
        after = threads() if profile is None else {}
        others: dict[str, float] = {}
        for tid, (name, ns) in after.items():
            if tid != main:
                delta = (ns - before.get(tid, (name, 0))[1]) / 1e9
                if delta > 0:
                    others[name] = others.get(name, 0.0) + delta
        record = {
            "pid": os.getpid(),
            "shard": self.shard_id,
            "cpu_seconds": result.cpu_seconds,
            "seconds": result.seconds,
            "main_thread_cpu_s": thread,
            "other_threads_cpu_s": others,
            "retrained": list(result.slices_retrained),
            "settings": settings(),
        }
        with open(records, "a") as f:
            f.write(json.dumps(record) + "\n")
        return result

    Shard.update = update  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--grid", default="16x8")
    parser.add_argument("--erasures", type=int, default=5)
    parser.add_argument("--profile-dir")
    args = parser.parse_args()
    import logging

    import ray

    from expunge.orchestrator.digests import SubjectHasher
    from expunge.pipelines.benchmark import _measure, parity_training
    from expunge.pipelines.datasets import load_movielens, split_rows

    with tempfile.TemporaryDirectory(prefix="mf-ray-probe-") as scratch:
        records = Path(scratch) / "records.jsonl"
        env = {RECORDS_ENV: str(records)}
        if args.profile_dir:
            Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
            env[PROFILE_ENV] = str(Path(args.profile_dir).resolve())
        os.environ.setdefault("RAY_worker_niceness", "0")  # as init_ray's own cluster
        if "RAY_AUTH_MODE" not in os.environ:  # as pipelines._runtime._start_ray
            os.environ["RAY_AUTH_MODE"] = "token"
            from ray._raylet import Config  # type: ignore[attr-defined]

            Config.initialize("")
        ray.init(
            address="local",
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            runtime_env={"worker_process_setup_hook": _hook, "env_vars": env},
        )
        rows = load_movielens(Path(args.data))
        train, test = split_rows(rows, 0.2, 0)
        hasher = SubjectHasher(b"expunge-benchmark-key-not-secret!!")
        report: dict[str, Any] = {}
        for cell in ["1x1", *args.grid.split(",")]:
            shards, slices = (int(x) for x in cell.split("x"))
            records.write_text("")
            count = 1 if cell == "1x1" else args.erasures
            row = _measure(train, test, shards, slices, parity_training(), count, 0, hasher)
            calls = [json.loads(line) for line in records.read_text().splitlines()]
            others: dict[str, float] = {}
            for c in calls:
                for name, s in c["other_threads_cpu_s"].items():
                    others[name] = others.get(name, 0.0) + s / len(calls)
            report[cell] = {
                "receipt_cpu_s": row.retrain_cpu_seconds,
                "update_cpu_s_mean": statistics.fmean(c["cpu_seconds"] for c in calls),
                "main_thread_cpu_s_mean": statistics.fmean(c["main_thread_cpu_s"] for c in calls),
                "other_threads_cpu_s_mean": {k: round(v, 5) for k, v in sorted(others.items(), key=lambda x: -x[1])},
                "calls": calls,
            }
        ray.shutdown()
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, default=float))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
