"""MF erasure CPU of ``Shard.update`` against a monolithic retrain, in process (issue 22's cpu_of_ideal, no Ray).

    .venv/bin/python dev/perf/mf_shard_erasure.py /abs/ml-100k.inter [--grid 8x8,16x8] [--erasures 8]
        [--profile out.prof]

The benchmark's data and training (80/20 split, ``parity_training``: MF dim 32, 20 epochs, batch
512), subjects placed as ``place_subjects(..., "balanced")`` places them. Per S x R: the shards of
``--erasures`` random subjects (the benchmark's 5 by default, chosen as it chooses them) are
trained, then each subject is erased (``Shard.erase`` at its slice); CPU seconds are ``ShardUpdate.cpu_seconds``, as ``ErasureReceipt.retrain_cpu_seconds`` sums
them. The monolith (1x1) erases ``--monolith-runs`` subjects (3, as the benchmark's
``MONOLITH_ERASURES``, drawn as it draws them), each from a freshly trained monolith; the median of
their CPU is the baseline. ``--profile``: cProfile of the S x R erasures into that file (the last
grid). Prints one JSON object: per grid the mean erasure CPU, the CPU speed-up against the monolith
(``cpu_speedup``) and its fraction of the ideal (``cpu_of_ideal``), and the optimiser steps:
``step_bound`` is the ``cpu_of_ideal`` the erasures would reach if every step cost what a monolith
step costs and nothing else cost anything (the monolith's steps over the mean erasure's, over the
ideal). It sits a little below 1 where a shard's small prefixes end epochs on part-filled batches
(a step costs about the same whatever its fill: ``dev/perf/mf_step.py``), and can read above 1 where
the erased subjects' cells hold fewer rows than the ideal's equal cells.
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
from expunge.pipelines.benchmark import MONOLITH_ERASURES, parity_training
from expunge.pipelines.datasets import split_rows
from expunge.shards import training as shard_training
from expunge.shards.movielens import load_movielens
from expunge.shards.rows import SUBJECT_DIGEST, SUBJECT_ID
from expunge.shards.shard import Shard

_STEPS = [0]
_clear_grads = shard_training._clear_grads


def _counted_clear_grads(optimizer):  # once per optimiser step (train_steps calls it before each backward)
    _STEPS[0] += 1
    _clear_grads(optimizer)


shard_training._clear_grads = _counted_clear_grads


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
    cpu, firsts, steps = [], [], []
    for n, digest in enumerate(chosen):
        shard_id, first = cells[digest]
        if shard_id not in trained:
            shard = Shard(shard_id, f"{scratch}/S{shards}R{slices}", training, model)
            shard.train(_slices(rows, cells, shard_id, slices))
            trained[shard_id] = shard
        if profile is not None:
            profile.enable()
        before = _STEPS[0]
        update = trained[shard_id].erase([digest], first, f"request-{n}")
        steps.append(_STEPS[0] - before)
        if profile is not None:
            profile.disable()
        cpu.append(update.cpu_seconds)
        firsts.append(first)
    return cpu, firsts, steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--grid", default="8x8,16x8")
    parser.add_argument("--erasures", type=int, default=5)
    parser.add_argument("--monolith-runs", type=int, default=MONOLITH_ERASURES)
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
        monolith, monolith_steps = [], 0
        drawn = np.random.default_rng(args.seed).choice(len(subjects), size=args.monolith_runs, replace=False)
        for run, index in enumerate(drawn):  # the benchmark's draw; each erasure from a fresh monolith
            cpu, _, counted = _erasures(rows, 1, 1, [subjects[int(index)]], f"{scratch}/m{run}", None)
            monolith.append(cpu[0])
            monolith_steps = counted[0]
        monolith_cpu = statistics.median(monolith)
        report["monolith_cpu_s"] = monolith
        report["monolith_steps"] = monolith_steps
        for cell in args.grid.split(","):
            shards, slices = (int(x) for x in cell.split("x"))
            rng = np.random.default_rng(args.seed)
            chosen = [subjects[int(i)] for i in rng.choice(len(subjects), size=args.erasures, replace=False)]
            profile = cProfile.Profile(time.process_time) if args.profile else None  # CPU, as cpu_of_ideal counts
            cpu, firsts, steps = _erasures(rows, shards, slices, chosen, scratch, profile)
            if profile is not None:
                profile.dump_stats(args.profile)
            ideal = monolith_ideal_speedup(shards, slices, parity_training().epochs, firsts)
            mean = statistics.fmean(cpu)
            report[cell] = {
                "erasure_cpu_s": [round(c, 4) for c in cpu],
                "first_affected": firsts,
                "erasure_cpu_s_mean": round(mean, 4),
                "ideal_speedup_vs_monolith": round(ideal, 3),
                "cpu_speedup": round(monolith_cpu / mean, 2),
                "cpu_of_ideal": round(monolith_cpu / mean / ideal, 3),
                "steps_mean": round(statistics.fmean(steps), 1),
                "step_bound": round(monolith_steps / statistics.fmean(steps) / ideal, 3),
            }
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
