"""The warm service under a paced stream (issue 22's service goals), as one JSON line.

Usage: .venv/bin/python dev/perf/service_stream.py ML-100K.inter [RATE] [DURATION]
Runs ``expunge benchmark service --model item_stats --rate RATE --duration DURATION`` (20 and 60
by default) in a child process and prints the committed, ready_to_serve and registered p50/p99,
ready_to_serve (every request, and those that erased someone) over the exact solve, the batch count, the lost count and the load average. With
dev/perf/side_by_side.py it compares two commits.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

data = sys.argv[1]
rate = sys.argv[2] if len(sys.argv) > 2 else "20"
duration = sys.argv[3] if len(sys.argv) > 3 else "60"
with tempfile.TemporaryDirectory() as scratch:
    output = Path(scratch) / "service.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "expunge.pipelines.cli",
            "benchmark",
            "service",
            "--data",
            data,
            "--model",
            "item_stats",
            "--rate",
            rate,
            "--duration",
            duration,
            "--output",
            str(output),
        ],
        check=True,
        cwd=scratch,
        capture_output=True,
    )
    result = json.loads(output.read_text())
names = (
    "committed",
    "ready_to_serve",
    "ready_to_serve_erased",
    "registered",
)  # the third from issue 22's sixth pass on
stages = {s: {k: round(result[s][k], 3) for k in ("p50", "p99")} for s in names if s in result}
solve = result["exact_solve"]["p50"]
print(
    json.dumps(
        {
            **stages,
            "ready_over_solve": round(result["ready_to_serve_over_exact_solve"], 2),  # the tree's own definition
            # Comparable across trees: every request's ready_to_serve p50, and (where the tree says) the erasures'.
            "ready_all_over_solve": round(result["ready_to_serve"]["p50"] / solve, 2),
            "ready_erased_over_solve": round(result["ready_to_serve_erased"]["p50"] / solve, 2)
            if "ready_to_serve_erased" in result
            else None,
            "solve_p50": solve,
            "warm_solve_p50": (result.get("exact_solve_warm") or {}).get("p50"),
            "ready_erased_over_warm_solve": result.get("ready_to_serve_over_warm_solve"),
            "warm_samples": result.get("warm_solve_samples"),
            "solve_samples": result.get("exact_solve_samples"),  # before the stream, then after (newer trees)
            "quiet_waits": result.get("quiet_waits"),
            "batches": result["batches"],
            "lost": result["lost"],
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
    )
)
