"""Expunge's actors run at ``training.niceness``, not Ray's 15; without the privilege, a warning says how to fix it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

import pytest

from expunge.shards.config import TrainingConfig
from expunge.shards.niceness import apply_niceness, favoured_thread, nicer_thread


def test_niceness_is_not_part_of_the_training_fingerprint():
    # Where a shard runs does not change its tensors: stores trained before the setting keep their keys.
    assert TrainingConfig(niceness=10).fingerprint() == TrainingConfig().fingerprint()


def test_a_process_started_at_15_runs_at_the_configured_niceness():
    probe = "from expunge.shards.niceness import apply_niceness; print(apply_niceness(0), apply_niceness(7))"
    out = subprocess.run(
        ["nice", "-n", "15", sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    first, second = out.stdout.split()
    # As root the priority can be raised to 0; otherwise the process stays at 15 (and warns).
    assert int(first) == (0 if os.geteuid() == 0 else 15)
    assert int(second) == (7 if os.geteuid() == 0 else 15)


def test_without_the_privilege_to_raise_priority_the_actor_warns_and_runs_on(monkeypatch, caplog):
    def refuse(which: int, who: int, value: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "getpriority", lambda which, who: 15)
    monkeypatch.setattr(os, "setpriority", refuse)
    with caplog.at_level(logging.WARNING, logger="expunge"):
        assert apply_niceness(0) == 15
    assert "RAY_worker_niceness=0" in caplog.text


def test_a_thread_made_nicer_gives_way_alone_and_the_rest_of_the_process_keeps_its_niceness():
    before = os.getpriority(os.PRIO_PROCESS, 0)
    seen: list[int | None] = []
    thread = threading.Thread(target=lambda: seen.append(nicer_thread(3)))
    thread.start()
    thread.join(60)
    assert seen == [min(19, before + 3)]
    assert os.getpriority(os.PRIO_PROCESS, 0) == before


@pytest.mark.parametrize("increment", [-1, 20])
def test_a_niceness_increment_outside_0_to_19_is_refused(increment):
    with pytest.raises(ValueError, match=r"lies in 0-19"):
        nicer_thread(increment)


def test_a_favoured_thread_runs_at_its_niceness_or_keeps_the_processs_and_says_so(monkeypatch, caplog):
    before = os.getpriority(os.PRIO_PROCESS, 0)
    target = before + 2 if os.geteuid() != 0 else -5  # lowering priority needs no privilege
    seen: list[int | None] = []
    thread = threading.Thread(target=lambda: seen.append(favoured_thread(target, "a test thread")))
    thread.start()
    thread.join(60)
    assert seen == [target]
    assert os.getpriority(os.PRIO_PROCESS, 0) == before  # the rest of the process keeps its niceness

    def refuse(which: int, who: int, value: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    seen.clear()
    with caplog.at_level(logging.INFO, logger="expunge"):
        thread = threading.Thread(target=lambda: seen.append(favoured_thread(before - 1, "the ready solve")))
        thread.start()
        thread.join(60)
    assert seen == [before]
    assert "the ready solve keeps niceness" in caplog.text
    assert "CAP_SYS_NICE" in caplog.text
    with pytest.raises(ValueError, match=r"lies in -20\.\.19"):
        favoured_thread(20, "x")
