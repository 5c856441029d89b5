"""Waiting for a quiet machine before timing something "alone" (Linux ``/proc/stat``).

``expunge benchmark service`` compares ready-to-serve with the exact solve timed alone. Right
after a stream (and after the warm-up) the service may still have work trailing (MLflow's purge
of older versions on the registration thread, the MLflow database behind it); a solve timed beside
it is not alone. So each timed solve first waits until the machine's CPUs were idle over a window,
and says how long it waited.
"""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["busy_fraction", "cpu_times", "wait_until_quiet"]

_STAT = Path("/proc/stat")


def cpu_times(text: str) -> tuple[int, int]:
    """Pure: (busy, total) jiffies of every CPU from the text of ``/proc/stat`` (its first ``cpu`` line).

    Idle is ``idle`` + ``iowait``; guest time is already counted in ``user`` and ``nice``.

    Raises:
        ValueError: the text has no ``cpu`` line of at least four numbers.
    """
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            numbers = [int(x) for x in fields[1:9]]
            if len(numbers) < 4:
                break
            idle = numbers[3] + (numbers[4] if len(numbers) > 4 else 0)
            total = sum(numbers)
            return total - idle, total
    raise ValueError("no aggregate 'cpu' line of at least four numbers in /proc/stat")


def busy_fraction(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Pure: the fraction of all CPU time that was busy between two ``cpu_times`` readings, in [0, 1]."""
    total = after[1] - before[1]
    return 0.0 if total <= 0 else min(1.0, max(0.0, (after[0] - before[0]) / total))


def wait_until_quiet(limit_s: float = 15.0, window_s: float = 1.0, busy: float = 0.05) -> float | None:
    """Wait until the machine's CPUs were at most ``busy`` (fraction of all of them) busy over one
    ``window_s`` window, for at most ``limit_s`` seconds.

    Returns the seconds waited (at least one window), or None where ``/proc/stat`` cannot be read
    (not Linux) or the machine never went quiet within the limit.
    """
    try:
        reading = cpu_times(_STAT.read_text())
    except (OSError, ValueError):
        return None
    began = time.monotonic()
    while True:
        time.sleep(window_s)
        latest = cpu_times(_STAT.read_text())
        if busy_fraction(reading, latest) <= busy:
            return time.monotonic() - began
        if time.monotonic() - began >= limit_s:
            return None
        reading = latest
