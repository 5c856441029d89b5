"""The ready solve's fit of a pure erasure, carried over against built, in CPU milliseconds, and that both agree bit for bit.

    .venv/bin/python dev/perf/ready_refit.py /abs/ml-100k.inter [--erased 5] [--rounds 12] [--seed 0]

Sums every MovieLens row (as ``expunge.pipelines.benchmark_stream.stream_rows`` gives them,
digests of 64 hex characters) into one ``item_stats`` state, refits it, then ``rounds`` times takes
``erased`` random subjects out (``without_subjects``) and times (``time.thread_time``, one BLAS
thread) ``ItemStatsModel.refit`` from the last refit (the ready solve's path: dense matrices
carried over) and ``ItemStatsModel.fit`` (built from every pair), with the carry-over, the build,
the eigenpairs and the ranking timed apart. Checks every fitted array of each refit against the fit
bit for bit. Prints one JSON object (medians after the first round, which warms up) with the load
average before and after.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from expunge.pipelines.benchmark_stream import stream_rows
from expunge.pipelines.datasets import load_movielens
from expunge.shards.config import ItemStatsConfig
from expunge.shards.models import ItemStatsModel, item_stats, item_stats_dense
from expunge.shards.rows import ITEM_ID, SUBJECT_DIGEST, SUBJECT_ID

_ARRAYS = ("similarity", "factors", "ranking", "item_bias", "rated_items")


def _timed(phases: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        began = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            phases[name] += time.thread_time() - began

    return call


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--erased", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = stream_rows(load_movielens(Path(args.data)))
    digests = [hashlib.sha256(str(s).encode()).hexdigest() for s in rows.column(SUBJECT_ID).to_pylist()]
    rows = rows.append_column(SUBJECT_DIGEST, pa.array(digests))
    model = ItemStatsModel(ItemStatsConfig(num_items=int(pc.max(rows.column(ITEM_ID)).as_py()) + 1))
    phases: dict[str, float] = defaultdict(float)
    item_stats_dense.carry_over = _timed(phases, "carry_over", item_stats_dense.carry_over)  # type: ignore[assignment]
    item_stats_dense.build = _timed(phases, "build", item_stats_dense.build)  # type: ignore[assignment]
    item_stats._top_eigenpairs = _timed(phases, "eigenpairs", item_stats._top_eigenpairs)  # type: ignore[assignment]
    item_stats.ItemStatsFit._ranking = staticmethod(_timed(phases, "ranking", item_stats.ItemStatsFit._ranking))  # type: ignore[method-assign]
    state = model.accumulate(model.empty(), rows)
    last = model.refit(state)
    rng = np.random.default_rng(args.seed)
    samples: dict[str, list[float]] = defaultdict(list)
    carried, identical = 0, True
    for _ in range(args.rounds):
        held = model.subjects_of(state)
        state = model.without_subjects(state, [held[int(i)] for i in rng.choice(len(held), args.erased, replace=False)])
        for path in ("refit", "fit"):
            phases.clear()
            began = time.thread_time()
            fitted = model.refit(state, last) if path == "refit" else model.fit(state)
            samples[f"{path}_ms"].append((time.thread_time() - began) * 1e3)
            for name, seconds in phases.items():
                samples[f"{path}_{name}_ms"].append(seconds * 1e3)
            if path == "refit":
                carried += bool(fitted.carried)
                refit = fitted
        identical &= all(
            np.asarray(getattr(refit, n)).tobytes() == np.asarray(getattr(fitted, n)).tobytes() for n in _ARRAYS
        )
        identical &= refit.mu == fitted.mu
        last = refit
    report: dict[str, Any] = {
        name: round(statistics.median(values[1:] or values), 1) for name, values in sorted(samples.items())
    }
    report.update(
        {
            "carried": f"{carried} of {args.rounds}",
            "bit_identical": identical,
            "load_average": [[round(x, 2) for x in load_before], [round(x, 2) for x in os.getloadavg()]],
        }
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
