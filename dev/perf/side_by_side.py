"""Run one measuring script against two commits, alternated in one run (docs/performance.md).

    .venv/bin/python dev/perf/side_by_side.py --before 92db4b4 --after a122222 --runs 2 \\
        dev/perf/item_stats_training.py ../shared/data/ml-100k/ml-100k.inter 8 4

Each commit's tree is extracted and imported as ``expunge`` (``cold_cli_erasure._tree``); the
script (taken from the working tree) runs under each in turn, in a scratch folder, and must print
one JSON object; give data paths absolute.
Prints {"before": [...], "after": [...]}, one entry per run.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cold_cli_erasure import _tree

parser = argparse.ArgumentParser()
parser.add_argument("--before", required=True)
parser.add_argument("--after", required=True)
parser.add_argument("--runs", type=int, default=2)
parser.add_argument("script")
parser.add_argument("arguments", nargs=argparse.REMAINDER)
args = parser.parse_args()
script = Path(args.script).resolve()
with tempfile.TemporaryDirectory(prefix="side-by-side-") as scratch:
    sites = {which: _tree(getattr(args, which), Path(scratch) / which) for which in ("before", "after")}
    results: dict[str, list[object]] = {"before": [], "after": []}
    for _ in range(args.runs):
        for which, site in sites.items():  # alternated, so that load changes hit both alike
            done = subprocess.run(
                [sys.executable, str(script), *args.arguments],
                env={**os.environ, "PYTHONPATH": str(site)},
                cwd=scratch,  # not the checkout: its expunge/ folder would be imported instead of the commit's
                capture_output=True,
                text=True,
                check=True,
            )
            results[which].append(json.loads(done.stdout[done.stdout.index("{") :]))
print(json.dumps(results, indent=1))
