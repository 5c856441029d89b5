"""The ready path's ways to a new version's item_stats sum, in CPU milliseconds, and that they agree bit for bit.

    .venv/bin/python dev/perf/ready_sum_paths.py /abs/ml-100k.inter [--shards 8] [--erased 20] [--repeats 5]

Builds ``shards`` shard states of MovieLens (every ``shards``-th subject, rows as
``expunge.pipelines.benchmark_stream.stream_rows`` gives them, digests of 64 hex characters), erases
``erased`` random subjects (seed 1), and times, best of ``repeats`` (``time.process_time``):
decoding the changed shards' checkpoints, ``changed_parts`` + ``subtract`` (the read path's sum),
``without_subjects`` on the last sum (a pure erasure's sum, no read), ``combine`` of every shard
(a from-scratch sum) and the fit. Checks that both ways give the from-scratch sum bit for bit.
Prints one JSON object with the load average before and after.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import torch

from expunge.orchestrator.config import ItemStatsConfig
from expunge.orchestrator.serving.ensemble import StatisticsEnsemble
from expunge.pipelines.benchmark_stream import stream_rows
from expunge.pipelines.datasets import load_movielens
from expunge.shards.models import ItemStatsModel
from expunge.shards.rows import ITEM_ID, SUBJECT_DIGEST, SUBJECT_ID
from expunge.shards.training import TrainedState, load_checkpoint, serialize_state


def best_ms(action: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        began = time.process_time()
        result = action()
        best = min(best, time.process_time() - began)
    return round(best * 1e3, 1), result


def same(left: torch.nn.Module, right: torch.nn.Module) -> bool:
    a, b = left.state_dict(), right.state_dict()
    return left.subjects == right.subjects and list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--erased", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = stream_rows(load_movielens(args.data))
    digests = [hashlib.sha256(str(s).encode()).hexdigest() for s in rows.column(SUBJECT_ID).to_pylist()]
    rows = rows.append_column(SUBJECT_DIGEST, pa.array(digests))
    model = ItemStatsModel(ItemStatsConfig(num_items=int(pc.max(rows.column(ITEM_ID)).as_py()) + 1))
    subjects = sorted(set(digests))
    erased = set(random.Random(1).sample(subjects, args.erased))

    def state_of(members: list[str]) -> torch.nn.Module:
        return model.contribution(rows.filter(pc.is_in(rows.column(SUBJECT_DIGEST), value_set=pa.array(members))))

    groups = [subjects[s :: args.shards] for s in range(args.shards)]
    before = [state_of(g) for g in groups]
    after = [state_of([d for d in g if d not in erased]) for g in groups]
    total = model.combine(before)
    blobs = [serialize_state(model, TrainedState(s, None, 8), ["x"] * 8) for s in after]
    changed = [i for i, g in enumerate(groups) if erased & set(g)]
    timings: dict[str, float] = {}
    timings["decode_changed_checkpoints"], decoded = best_ms(
        lambda: [load_checkpoint(model, blobs[i]).module for i in changed], args.repeats
    )

    def read_path() -> torch.nn.Module:
        out, into = model.changed_parts([before[i] for i in changed], decoded)
        return model.subtract(total, out, into)

    timings["changed_parts_and_subtract"], by_reading = best_ms(read_path, args.repeats)
    timings["without_subjects"], by_subtraction = best_ms(
        lambda: model.without_subjects(total, sorted(erased)), args.repeats
    )
    timings["combine_every_shard"], from_scratch = best_ms(lambda: model.combine(after), args.repeats)
    timings["fit"], _ = best_ms(lambda: StatisticsEnsemble(model, [from_scratch]), max(1, args.repeats // 2))
    print(
        json.dumps(
            {
                "shards": args.shards,
                "changed_shards": len(changed),
                "erased_subjects": len(erased),
                "cpu_ms_best": timings,
                "read_path_bit_identical": same(by_reading, from_scratch),
                "subtraction_bit_identical": same(by_subtraction, from_scratch),
                "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            }
        )
    )


if __name__ == "__main__":
    main()
