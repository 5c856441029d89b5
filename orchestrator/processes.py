"""Local processes: is one alive, and ending a set of them (terminate, then kill)."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["end_processes", "process_alive", "process_started", "psutil_module"]


def process_started(pid: int) -> str | None:
    """When process ``pid`` started, as ``"<clock ticks since boot>@<time namespace>"`` (``/proc/<pid>/stat``
    field 22, which the kernel gives relative to the reader's time namespace, and ``/proc/self/ns/time``);
    None where it cannot be read (no such process, a ``/proc`` mounted with ``hidepid``, no ``/proc``).
    With the pid, it names one process for good: pids are reused (32768 of them wrap within minutes
    on a busy machine), and a thread's id answers ``kill(id, 0)`` as a process does."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()  # the command name may hold spaces and ")"
    except OSError:
        return None
    if len(fields) <= 19:
        return None
    try:
        space = os.readlink("/proc/self/ns/time")
    except OSError:
        space = ""
    return f"{fields[19].decode()}@{space}"


def process_alive(pid: int, started: str | None = None) -> bool:
    """Whether a process with ``pid`` runs on this machine (another user's counts as alive); with ``started``
    (``process_started`` of it, recorded while it ran), only that process: a reused pid is not it.
    Where the start time cannot be compared (hidden from this reader, another time namespace, an
    older record), the pid alone tells, as without ``started``."""
    if started is not None:
        now = process_started(pid)
        if now is not None and now.partition("@")[2] == started.partition("@")[2]:
            return now == started
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
