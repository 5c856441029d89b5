"""`expunge benchmark service --http`: many HTTP clients against the real service, every request done."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.integration
@pytest.mark.slow
def test_the_http_load_run_completes_every_request_and_reports_each_stage(tmp_path):
    output = tmp_path / "http.json"
    command = [sys.executable, "-m", "expunge.pipelines.cli", "benchmark", "service", "--http"]
    command += ["--shards", "2", "--slices", "2", "--subjects", "60", "--requests", "12", "--clients", "6"]
    command += ["--epochs", "1", "--probes", "5", "--output", str(output)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["completed"] == 12
    assert result["failed"] == 0
    assert set(result["stages"]) == {"accepted", "committed", "done", "client_saw_done"}
    assert result["stages"]["done"]["p99"] >= result["stages"]["committed"]["p50"]
    assert result["status_http"]["n"] == 5
