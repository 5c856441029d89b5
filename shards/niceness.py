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

__all__ = ["WORKER_NICENESS_ENV", "apply_niceness", "current_niceness"]

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
