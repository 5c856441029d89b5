"""Local process helpers used to stop what Expunge started (and only that)."""

from __future__ import annotations

import os
import subprocess

from expunge.orchestrator.processes import end_processes, process_alive, psutil_module


def test_a_started_process_is_alive_until_ended():
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert process_alive(child.pid)
        end_processes([psutil_module().Process(child.pid)], grace_s=5)
        assert child.wait(timeout=5) is not None
    finally:
        child.kill()
    assert process_alive(os.getpid())
    assert not process_alive(2**22 + 12345)  # above the default pid_max
