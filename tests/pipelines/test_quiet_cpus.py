"""Waiting for idle CPUs before a solve is timed alone (expunge benchmark service)."""

from __future__ import annotations

import pytest

from expunge.pipelines import quiet_cpus
from expunge.pipelines.quiet_cpus import busy_fraction, cpu_times, wait_until_quiet

_STAT = """cpu  {user} 0 {system} {idle} {iowait} 0 0 0 0 0
cpu0 1 2 3 4 5 6 7 8 9 10
intr 123
"""


def test_busy_and_total_jiffies_come_from_the_aggregate_line() -> None:
    busy, total = cpu_times(_STAT.format(user=100, system=50, idle=800, iowait=50))
    assert (busy, total) == (150, 1000)  # iowait counts as idle


def test_the_busy_fraction_between_two_readings() -> None:
    before = cpu_times(_STAT.format(user=100, system=50, idle=800, iowait=50))
    after = cpu_times(_STAT.format(user=130, system=60, idle=950, iowait=60))
    assert busy_fraction(before, after) == pytest.approx(40 / 200)
    assert busy_fraction(after, after) == 0.0


def test_a_text_without_the_aggregate_line_is_refused() -> None:
    with pytest.raises(ValueError, match="cpu"):
        cpu_times("cpu0 1 2 3 4\nintr 1\n")


def test_it_waits_until_a_window_is_quiet(monkeypatch, tmp_path) -> None:
    readings = iter([(0, 100), (90, 200), (180, 300), (185, 400)])  # busy 90 %, 90 %, then 5 %
    texts = iter(_STAT.format(user=b, system=0, idle=t - b, iowait=0) for b, t in readings)
    monkeypatch.setattr(quiet_cpus, "_STAT", _Text(texts))
    assert wait_until_quiet(limit_s=60, window_s=0.0, busy=0.1) is not None
    with pytest.raises(StopIteration):
        next(texts)  # it read until the quiet window, and no further


def test_a_machine_that_never_goes_quiet_is_timed_anyway(monkeypatch) -> None:
    counter = iter(range(0, 10**6, 100))
    monkeypatch.setattr(quiet_cpus, "_STAT", _Text(_STAT.format(user=b, system=0, idle=0, iowait=0) for b in counter))
    assert wait_until_quiet(limit_s=0.0, window_s=0.0) is None


def test_no_proc_stat_is_no_wait(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(quiet_cpus, "_STAT", tmp_path / "absent")
    assert wait_until_quiet(limit_s=60) is None


class _Text:
    """A stand-in for the ``/proc/stat`` path whose reads return the next text."""

    def __init__(self, texts) -> None:
        self._texts = texts

    def read_text(self) -> str:
        return next(self._texts)
