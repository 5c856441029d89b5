"""Local processes: is one alive, and ending a set of them (terminate, then kill)."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["end_processes", "process_alive", "psutil_module"]


def process_alive(pid: int) -> bool:
    """Whether a process with ``pid`` runs on this machine (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def psutil_module() -> Any:
    """psutil (Ray vendors it; imported through Ray when not installed on its own)."""
    try:
        return importlib.import_module("psutil")
    except ImportError:
        importlib.import_module("ray")  # Ray vendors psutil and puts it on sys.path when imported
        return importlib.import_module("psutil")


def end_processes(procs: Sequence[Any], grace_s: float) -> None:
    """SIGTERM every ``psutil.Process`` in ``procs``, wait ``grace_s`` seconds, SIGKILL what is left, wait again."""
    psutil = psutil_module()
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(list(procs), timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)
