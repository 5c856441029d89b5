"""item_stats training CPU against a plain EASE fit on the same rows, side by side (docs/performance.md).

Usage: .venv/bin/python dev/perf/item_stats_training.py [ML-100K .inter path] [S] [R]
Prints JSON: CPU seconds of a plain EASE fit (dense user x item matrix, Gram, inverse), of
Expunge's item_stats training (every shard's exact sums, in this process, with its checkpoint
and slice writes), of summing the shards' states, and of the fit that serves them (EASE ranking
plus the baseline, item-KNN and low-rank parts), each the median of 3 runs.
"""

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from expunge.orchestrator.config import ItemStatsConfig, JobConfig, ShardingConfig, TrainingConfig
from expunge.orchestrator.coordinator import Coordinator
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.evidence.rederive import final_states
from expunge.orchestrator.session import local_pool
from expunge.pipelines.datasets import load_movielens, split_rows
from expunge.shards.models import model_for
from expunge.shards.rows import ITEM_ID, SUBJECT_ID

path = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/ml-100k/ml-100k.inter")
shards, slices = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (8, 4)
train, _ = split_rows(load_movielens(path), 0.2)
items = int(max(train.column(ITEM_ID).to_pylist())) + 1


def plain_ease() -> float:
    began = time.process_time()
    users = np.unique(np.asarray(train.column(SUBJECT_ID).to_pylist()), return_inverse=True)[1]
    matrix = np.zeros((users.max() + 1, items))
    matrix[users, train.column(ITEM_ID).to_numpy().astype(np.int64)] = 1.0
    inverse = np.linalg.inv(matrix.T @ matrix + 500.0 * np.eye(items))
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    return time.process_time() - began


def item_stats() -> tuple[float, float, float]:
    job = JobConfig(
        sharding=ShardingConfig(shards=shards, slices=slices), training=TrainingConfig(model=ItemStatsConfig())
    )
    with tempfile.TemporaryDirectory() as scratch:
        coordinator = Coordinator(str(Path(scratch) / "store"), SubjectHasher(b"k" * 32), pool_factory=local_pool)
        began = time.process_time()
        coordinator.train(train, job)
        trained = time.process_time() - began
        assert coordinator.manifest is not None
        model = model_for(coordinator.manifest.model)
        states = [s.module for s in final_states(coordinator.catalog, coordinator.manifest)]
        began = time.process_time()
        summed = model.combine(states)
        combined = time.process_time() - began
        began = time.process_time()
        model.fit(summed)
        fitted = time.process_time() - began
        coordinator.close()
    return trained, combined, fitted


ease_runs = [plain_ease() for _ in range(3)]
runs = [item_stats() for _ in range(3)]
ease = statistics.median(ease_runs)
train_cpu, combine_cpu, fit_cpu = (statistics.median(r[i] for r in runs) for i in range(3))
print(
    json.dumps(
        {
            "rows": len(train),
            "shards": shards,
            "slices": slices,
            "plain_ease_fit_cpu_s": ease,
            "item_stats_train_cpu_s": train_cpu,
            "item_stats_combine_cpu_s": combine_cpu,
            "item_stats_fit_cpu_s": fit_cpu,
            "train_over_ease": train_cpu / ease,
            "train_combine_fit_over_ease": (train_cpu + combine_cpu + fit_cpu) / ease,
        },
        indent=1,
    )
)
