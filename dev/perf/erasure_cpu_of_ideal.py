"""MF erasure CPU against the monolith, at 8x8 and 16x8 (issue 22's cpu_of_ideal), as one JSON line.

Usage: .venv/bin/python dev/perf/erasure_cpu_of_ideal.py ML-100K.inter [GRID]
Runs ``expunge benchmark erasure --grid GRID --erasures 5 --s3 none`` on Ray in a child process
and prints, per S x R, the mean erasure CPU seconds, the CPU speed-up against the monolith and
its fraction of the ideal. With dev/perf/side_by_side.py it compares two commits.
"""

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

data = sys.argv[1]
grid = sys.argv[2] if len(sys.argv) > 2 else "8x8,16x8"
with tempfile.TemporaryDirectory() as scratch:
    output = Path(scratch) / "erasure.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "expunge.pipelines.benchmark",
            "--data",
            data,
            "--grid",
            grid,
            "--erasures",
            "5",
            "--s3",
            "none",
            "--output",
            str(output),
        ],
        check=True,
        capture_output=True,
    )
    rows = json.loads(output.read_text())
rows = rows if isinstance(rows, list) else rows["results"]
# Computed here from the raw seconds (mean CPU over the erasures, as the ideal is their mean work),
# so that two commits are compared on one definition whatever their benchmark printed.
monolith = statistics.fmean(next(r for r in rows if r["shards"] == r["slices"] == 1)["retrain_cpu_seconds"])
report = {}
for r in rows:
    mean_cpu = statistics.fmean(r["retrain_cpu_seconds"])
    report[f"{r['shards']}x{r['slices']}"] = {
        "retrain_cpu_s_mean": mean_cpu,
        "cpu_speedup_vs_monolith": monolith / mean_cpu,
        "ideal_speedup_vs_monolith": r["ideal_speedup_vs_monolith"],
        "cpu_of_ideal": monolith / mean_cpu / r["ideal_speedup_vs_monolith"],
    }
print(json.dumps(report))
