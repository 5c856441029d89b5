"""The scheduling niceness of a process that trains or serves: Expunge's actors run at ``training.niceness``.

Ray starts its workers at niceness 15 (``RAY_worker_niceness``), so on a machine that is busy
with anything else a retrain waits behind it: 1.6-3.4x slower in the measurements of issue 22.
Clusters Expunge starts itself get ``RAY_worker_niceness=0`` (``worker_environment``); in each
actor ``apply_niceness`` then sets the configured value. Lowering the priority is always
allowed; raising it (from Ray's 15 to 0 on a cluster started by others) needs CAP_SYS_NICE,
and without it the actor runs on at its niceness, with a warning that says how to fix it.
"""

from __future__ import annotations

import logging
import os
import threading

__all__ = ["WORKER_NICENESS_ENV", "apply_niceness", "current_niceness", "favoured_thread", "nicer_thread"]

log = logging.getLogger(__name__)

#: The environment variable Ray's raylet reads when it starts worker processes.
WORKER_NICENESS_ENV = "RAY_worker_niceness"


def current_niceness() -> int:
    """This process's niceness (-20 most favoured, 19 least)."""
    return os.getpriority(os.PRIO_PROCESS, 0)


def apply_niceness(target: int) -> int:
    """Set this process's niceness to ``target`` (0-19); returns the niceness it runs at afterwards.

    Never raises: without the privilege to raise the priority, logs a warning naming the fix
    and keeps the current niceness.
    """
    now = current_niceness()
    if now == target:
        return now
    try:
        os.setpriority(os.PRIO_PROCESS, 0, target)
    except PermissionError:
        log.warning(
            "this actor runs at niceness %d and may not raise its priority to %d (no CAP_SYS_NICE): start the "
            "cluster's workers with %s=%d, or set training.niceness to %d",
            now,
            target,
            WORKER_NICENESS_ENV,
            target,
            now,
        )
        return now
    return current_niceness()


def nicer_thread(increment: int) -> int | None:
    """Run the calling thread ``increment`` (0-19) nicer than it runs now; returns its niceness after, or None.

    Linux schedules each thread on its own, so one thread of a process can give way to the
    others (the service's registration thread, issue 22). Lowering the priority needs no
    privilege. Where threads cannot be reniced one by one (not Linux), logs at debug and returns None.

    Raises:
        ValueError: ``increment`` outside 0-19.
    """
    if not 0 <= increment <= 19:
        raise ValueError(f"a niceness increment lies in 0-19; got {increment}")
    thread = threading.get_native_id()
    try:
        now = os.getpriority(os.PRIO_PROCESS, thread)
        if increment:
            os.setpriority(os.PRIO_PROCESS, thread, min(19, now + increment))
        return os.getpriority(os.PRIO_PROCESS, thread)
    except OSError as exc:  # e.g. macOS: PRIO_PROCESS names processes only
        log.debug("thread %d keeps its niceness (%s)", thread, exc)
        return None


def favoured_thread(niceness: int, what: str) -> int | None:
    """Run the calling thread at ``niceness`` (-20 most favoured .. 19); returns its niceness after, or None.

    A niceness below the thread's own needs CAP_SYS_NICE (root, ``setcap cap_sys_nice+ep`` on the
    interpreter, or an RLIMIT_NICE that allows it): without it the thread keeps its niceness and one
    INFO line (naming ``what``) says so; not Linux (threads not reniced one by one): DEBUG, None.

    Raises:
        ValueError: ``niceness`` outside -20..19.
    """
    if not -20 <= niceness <= 19:
        raise ValueError(f"a niceness lies in -20..19; got {niceness}")
    thread = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, thread) != niceness:
            os.setpriority(os.PRIO_PROCESS, thread, niceness)
        return os.getpriority(os.PRIO_PROCESS, thread)
    except PermissionError:
        now = os.getpriority(os.PRIO_PROCESS, thread)
        log.info("%s keeps niceness %d: niceness %d needs CAP_SYS_NICE", what, now, niceness)
        return now
    except OSError as exc:  # e.g. macOS: PRIO_PROCESS names processes only
        log.debug("thread %d keeps its niceness (%s)", thread, exc)
        return None
