"""CPU seconds of drawing the per-shard retrain chart in a fresh process (docs/performance.md)."""

import json
import statistics
import subprocess
import sys

code = """
import io, time
t = time.process_time()
from matplotlib.figure import Figure
figure = Figure(figsize=(4.5, 2.8), dpi=100)
axes = figure.subplots()
axes.bar([f"shard {s}" for s in range(8)], [0.4] * 8, color="#4c72b0")
axes.axhline(3.0, color="#c44e52", linestyle="--", label="full retrain")
axes.legend(fontsize=7); axes.set_ylabel("retrain seconds"); figure.tight_layout()
figure.savefig(io.BytesIO(), format="png")
print(time.process_time() - t)
"""
runs = [
    float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    for _ in range(3)
]
print(json.dumps({"chart_cpu_s_median": statistics.median(runs), "runs": runs}))
