"""Cold CLI erasure before and after issue 22's fixed-cost cuts, side by side in one run (docs/performance.md).

    .venv/bin/python dev/perf/cold_cli_erasure.py --before 3661d7b --after 8e08b12 --runs 3

Extracts the ``--before`` commit, and the same tree with only the changes ``--after`` made to the
cold path's files (so that other work committed between them does not count), trains one store,
then alternates: a fresh process of each tree runs ``expunge benchmark profile``'s measured process
(what ``expunge forget`` does: imports, Ray start, MLflow, one cold erasure, then one warm erasure in
the same process, Ray shutdown, exit). Prints JSON: per tree, the process's wall and CPU seconds
(itself and the processes it reaped: Ray's), the cold CLI erasure alone (the process less its warm
erasure's stages) and the median stage table.
"""

import argparse
import json
import os
import random
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The files the cuts touched: the after tree is the before tree with these taken from --after.
CUT_FILES = [
    "orchestrator/registry/opening.py",
    "orchestrator/registry/lineage.py",
    "orchestrator/registry/__init__.py",
    "pipelines/_runtime.py",
    "pipelines/forget.py",
    "pipelines/benchmark_profile.py",
]
PACKAGES = {"orchestrator": "orchestrator", "shards": "shards", "pipelines": "pipelines"}


def _tree(commit: str, target: Path, overlay: str | None = None) -> Path:
    """``commit``'s files in ``target`` (with CUT_FILES from ``overlay``), importable as ``expunge``."""
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    for path in CUT_FILES if overlay else []:
        shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{overlay}:{path}"], capture_output=True, check=True)
        (target / path).write_bytes(shown.stdout)
    site = target / "_site"
    package = site / "expunge"
    shutil.copytree(target / "expunge", package)
    for name, folder in PACKAGES.items():
        (package / name).symlink_to(target / folder, target_is_directory=True)
    return site


def _measure(site: Path, spec: dict, env: dict[str, str]) -> dict:
    env = {**env, "PYTHONPATH": str(site)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    spawned_at = time.time()
    began = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "expunge.pipelines.benchmark_profile",
        "--child",
        json.dumps(spec),
        repr(spawned_at),
    ]
    # Run from the tree's own folder: ``-m`` puts the working directory first on sys.path.
    subprocess.run(command, env=env, cwd=site, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = json.loads(Path(spec["report"]).read_text())
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    warm = [s for s in report["stages"] if s["phase"] == "warm" and not s.get("overlapped")]
    return {
        "tree": str(site),
        "wall_s": wall,
        "cpu_s": cpu,
        # The cold CLI erasure alone: the process less its second (warm) erasure.
        "cold_wall_s": wall - sum(s["wall_s"] for s in warm),
        "cold_cpu_s": cpu - sum(s["cpu_s"] + (s["cluster_cpu_s"] or 0.0) for s in warm),
        "stages": report["stages"],
        "receipts": report["receipts"],
    }


def _median_stages(runs: list[dict]) -> list[dict]:
    names = [(s["phase"], s["name"]) for s in runs[0]["stages"]]
    table = []
    for phase, name in names:
        rows = [s for r in runs for s in r["stages"] if (s["phase"], s["name"]) == (phase, name)]
        table.append(
            {
                "phase": phase,
                "name": name,
                "wall_s": round(statistics.median(s["wall_s"] for s in rows), 2),
                "cpu_s": round(statistics.median(s["cpu_s"] for s in rows), 2),
                "overlapped": rows[0].get("overlapped", False),
            }
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", required=True)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    env = dict(os.environ, EXPUNGE_SUBJECT_KEY=os.environ.get("EXPUNGE_SUBJECT_KEY", secrets.token_hex(32)))
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    with tempfile.TemporaryDirectory(prefix="cold-cli-") as folder:
        work = Path(folder)
        sites = {"before": _tree(args.before, work / "before"), "after": _tree(args.before, work / "after", args.after)}
        sys.path.insert(0, str(sites["after"]))
        from expunge.pipelines.benchmark_profile import ProfileSettings, _job_yaml, _subjects

        config = _job_yaml(ProfileSettings(), work)
        train = [sys.executable, "-m", "expunge.pipelines.train", "--config", str(config)]
        subprocess.run(train, env={**env, "PYTHONPATH": str(sites["after"])}, cwd=work, capture_output=True, check=True)
        candidates, _ = _subjects(config, 0)
        random.Random(1).shuffle(candidates)
        results: dict[str, list[dict]] = {"before": [], "after": []}
        pairs = iter(range(0, len(candidates) - 1, 2))
        for run in range(args.runs):
            for which in ("before", "after"):  # alternated, so that load changes hit both alike
                first = next(pairs)
                chosen = candidates[first : first + 2]  # the same kind of request for both: two subjects
                spec = {"config": str(config), "subjects": chosen, "report": str(work / f"{which}-{run}.json")}
                results[which].append(_measure(sites[which], spec, env))
        summary = {
            which: {
                "process_wall_s": [round(r["wall_s"], 2) for r in runs],
                "process_cpu_s": [round(r["cpu_s"], 2) for r in runs],
                "process_wall_s_median": round(statistics.median(r["wall_s"] for r in runs), 2),
                "process_cpu_s_median": round(statistics.median(r["cpu_s"] for r in runs), 2),
                "cold_wall_s": [round(r["cold_wall_s"], 2) for r in runs],
                "cold_cpu_s": [round(r["cold_cpu_s"], 2) for r in runs],
                "cold_wall_s_median": round(statistics.median(r["cold_wall_s"] for r in runs), 2),
                "cold_cpu_s_median": round(statistics.median(r["cold_cpu_s"] for r in runs), 2),
                "stages_median": _median_stages(runs),
            }
            for which, runs in results.items()
        }
        print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
