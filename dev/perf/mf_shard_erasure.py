"""MF erasure CPU of ``Shard.update`` against a monolithic retrain, in process (issue 22's cpu_of_ideal, no Ray).

    .venv/bin/python dev/perf/mf_shard_erasure.py /abs/ml-100k.inter [--grid 8x8,16x8] [--erasures 8]
        [--profile out.prof]

The benchmark's data and training (80/20 split, ``parity_training``: MF dim 32, 20 epochs, batch
512), subjects placed as ``place_subjects(..., "balanced")`` places them. Per S x R: the shards of
``--erasures`` random subjects (the benchmark's 5 by default, chosen as it chooses them) are trained, then each subject is erased (``Shard.erase`` at its
slice); CPU seconds are ``ShardUpdate.cpu_seconds``, as ``ErasureReceipt.retrain_cpu_seconds`` sums
them. The monolith (1x1) erases one subject, as the benchmark's does, ``--monolith-runs`` times on
fresh shards (median). ``--profile``: cProfile of the S x R erasures into that file (the last grid).
Prints one JSON object: per grid the mean erasure CPU, the speed-up and its fraction of the ideal.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.training.placement import place_subjects
from expunge.orchestrator.training.work import monolith_ideal_speedup
from expunge.pipelines.benchmark import parity_training
from expunge.pipelines.datasets import split_rows
from expunge.shards.movielens import load_movielens
from expunge.shards.rows import SUBJECT_DIGEST, SUBJECT_ID
from expunge.shards.shard import Shard


def _cells(rows: pa.Table, shards: int, slices: int) -> dict[str, tuple[int, int]]:
    digests = rows.column(SUBJECT_DIGEST).to_pylist()
    counts: dict[str, int] = {}
    for d in digests:
        counts[d] = counts.get(d, 0) + 1
    return {d: (c.shard, c.slice) for d, c in place_subjects(counts, shards, slices, "balanced").items()}


def _slices(rows: pa.Table, cells: dict[str, tuple[int, int]], shard: int, slices: int) -> list[pa.Table]:
    column = rows.column(SUBJECT_DIGEST)
    return [
        rows.filter(pc.is_in(column, value_set=pa.array([d for d, c in cells.items() if c == (shard, k)], pa.string())))
        for k in range(slices)
    ]


def _erasures(
    rows: pa.Table, shards: int, slices: int, chosen: list[str], scratch: str, profile: cProfile.Profile | None
) -> tuple[list[float], list[int]]:
    training = parity_training()
    model = training.model.model_copy(update={"num_items": 1683})
    training = training.model_copy(update={"model": model})
    cells = _cells(rows, shards, slices)
    trained: dict[int, Shard] = {}
    cpu, firsts = [], []
    for n, digest in enumerate(chosen):
        shard_id, first = cells[digest]
        if shard_id not in trained:
            shard = Shard(shard_id, f"{scratch}/S{shards}R{slices}", training, model)
            shard.train(_slices(rows, cells, shard_id, slices))
            trained[shard_id] = shard
        if profile is not None:
            profile.enable()
        update = trained[shard_id].erase([digest], first, f"request-{n}")
        if profile is not None:
            profile.disable()
        cpu.append(update.cpu_seconds)
        firsts.append(first)
    return cpu, firsts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--grid", default="8x8,16x8")
    parser.add_argument("--erasures", type=int, default=5)
    parser.add_argument("--monolith-runs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile")
    args = parser.parse_args()
    hasher = SubjectHasher(b"expunge-benchmark-key-not-secret!!")
    rows, _ = split_rows(load_movielens(args.data), 0.2, args.seed)
    ids = rows.column(SUBJECT_ID).to_pylist()
    rows = rows.append_column(SUBJECT_DIGEST, pa.array([hasher.digest(u) for u in ids], pa.string()))
    # The benchmark's choice: a fresh generator per grid over the sorted subject ids.
    subjects = [hasher.digest(u) for u in sorted(set(ids))]
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="mf-shard-erasure-") as scratch:
        monolith = []
        for run in range(args.monolith_runs):
            one = [subjects[int(np.random.default_rng(args.seed).choice(len(subjects), size=1)[0])]]
            cpu, _ = _erasures(rows, 1, 1, one, f"{scratch}/m{run}", None)
            monolith.append(cpu[0])
        monolith_cpu = statistics.median(monolith)
        report["monolith_cpu_s"] = monolith
        for cell in args.grid.split(","):
            shards, slices = (int(x) for x in cell.split("x"))
            rng = np.random.default_rng(args.seed)
            chosen = [subjects[int(i)] for i in rng.choice(len(subjects), size=args.erasures, replace=False)]
            profile = cProfile.Profile(time.process_time) if args.profile else None  # CPU, as cpu_of_ideal counts
            cpu, firsts = _erasures(rows, shards, slices, chosen, scratch, profile)
            if profile is not None:
                profile.dump_stats(args.profile)
            ideal = monolith_ideal_speedup(shards, slices, parity_training().epochs, firsts)
            mean = statistics.fmean(cpu)
            report[cell] = {
                "erasure_cpu_s": [round(c, 4) for c in cpu],
                "first_affected": firsts,
                "erasure_cpu_s_mean": round(mean, 4),
                "ideal_speedup_vs_monolith": round(ideal, 3),
                "cpu_of_ideal": round(monolith_cpu / mean / ideal, 3),
            }
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
