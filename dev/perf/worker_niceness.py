"""Train phase wall seconds of one shard at niceness 15 vs 0, while two busy processes at niceness 0 load both cores."""

import json
import statistics
import subprocess
import sys

WORK = """
import os, sys, tempfile
os.setpriority(os.PRIO_PROCESS, 0, int(sys.argv[1]))
from expunge.orchestrator.config import JobConfig, ShardingConfig, SyntheticRatingsConfig, TrainingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.pipelines.datasets import synthetic_ratings
rows = synthetic_ratings(SyntheticRatingsConfig(users=400, items=200, ratings_per_user=30, seed=0))
job = JobConfig(sharding=ShardingConfig(shards=1, slices=2), training=TrainingConfig(epochs=8, batch_size=128))
with tempfile.TemporaryDirectory() as d:
    c = Coordinator(d + "/store", SubjectHasher(b"k" * 32), pool_factory=local_pool)
    m = c.train(rows, job).manifest
    print(m.train_seconds, m.train_cpu_seconds)
"""
busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
try:
    res = {15: [], 0: []}
    for _ in range(2):
        for n in (15, 0):
            out = subprocess.run([sys.executable, "-c", WORK, str(n)], capture_output=True, text=True, check=True)
            wall, cpu = map(float, out.stdout.split())
            res[n].append((wall, cpu))
finally:
    for p in busy:
        p.kill()
summary = {
    f"nice_{n}": {
        "wall_s_median": statistics.median(w for w, _ in v),
        "cpu_s_median": statistics.median(c for _, c in v),
        "runs": v,
    }
    for n, v in res.items()
}
summary["wall_ratio_15_over_0"] = summary["nice_15"]["wall_s_median"] / summary["nice_0"]["wall_s_median"]
print(json.dumps(summary))
