"""CPU seconds per MF optimiser step of a shard, in process (issue 22: a shard's step against the monolith's).

    .venv/bin/python dev/perf/mf_step.py /abs/ml-100k.inter [--shards 16] [--slices 8] [--repeats 5]

One shard's rows of MovieLens (every ``--shards``-th user, each user's rows in one of ``--slices``
slices), MF dim 32, 20 epochs, batch 512, fused Adam: ``train_steps`` from scratch, after one
warm-up run; each slice's checkpoint is encoded, as training does, and thrown away, so its encoding
counts in the step's CPU (about 0.16 ms a step at 16x8: ``--slices 1`` gives the steps with one
encode). Also the monolith's step (every row, one slice, one user table) for the same epochs.
Prints JSON: CPU seconds per optimiser step (median of the repeats) for both, the steps counted,
and the load average.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time

import pyarrow as pa
import pyarrow.compute as pc
import torch

from expunge.shards.config import MFConfig, TrainingConfig
from expunge.shards.movielens import load_movielens
from expunge.shards.rows import SUBJECT_DIGEST, SUBJECT_ID
from expunge.shards.schedule import allocate_epochs
from expunge.shards.training import configure_determinism, train_steps


def _slices(rows: pa.Table, shards: int, slices: int) -> list[pa.Table]:
    users = sorted({u for u in rows.column(SUBJECT_ID).to_pylist() if int(u) % shards == 0}, key=int)
    cell = {u: i % slices for i, u in enumerate(users)}
    return [
        rows.filter(pc.is_in(rows.column(SUBJECT_ID), value_set=pa.array([u for u in users if cell[u] == k])))
        for k in range(slices)
    ]


def _steps(tables: list[pa.Table], epochs: int, batch: int) -> int:
    per_step = allocate_epochs(epochs, len(tables))
    seen, total = 0, 0
    for table, e in zip(tables, per_step, strict=True):
        seen += len(table)
        total += e * -(-seen // batch)
    return total


def _cpu_per_step(tables: list[pa.Table], training: TrainingConfig, model: object, repeats: int) -> tuple[float, int]:
    steps = _steps(tables, training.epochs, training.batch_size)
    times = []
    for run in range(repeats + 1):
        began = time.process_time()
        train_steps(model, training, 0, tables, None, lambda step, data: None)  # type: ignore[arg-type]
        if run:  # the first run warms up
            times.append((time.process_time() - began) / steps)
    return statistics.median(times), steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from expunge.shards.models import model_for

    rows = load_movielens(args.data)
    digests = [hashlib.sha256(u.encode()).hexdigest() for u in rows.column(SUBJECT_ID).to_pylist()]
    rows = rows.append_column(SUBJECT_DIGEST, pa.array(digests, pa.string()))
    training = TrainingConfig(
        model=MFConfig(num_items=1683, embedding_dim=32), epochs=20, batch_size=512, optimizer_kernel="fused"
    )
    configure_determinism(training.threads_per_shard)
    model = model_for(training.model)
    shard, shard_steps = _cpu_per_step(_slices(rows, args.shards, args.slices), training, model, args.repeats)
    monolith_rows = rows.slice(0, len(rows) // args.shards)  # the monolith's step on one shard's row count
    monolith, monolith_steps = _cpu_per_step([monolith_rows], training, model, args.repeats)
    print(
        json.dumps(
            {
                "shard_cpu_ms_per_step": round(shard * 1e3, 4),
                "shard_steps": shard_steps,
                "monolith_cpu_ms_per_step": round(monolith * 1e3, 4),
                "monolith_steps": monolith_steps,
                "torch_threads": torch.get_num_threads(),
                "load_average": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
