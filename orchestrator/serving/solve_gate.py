"""The ready solve's GIL-bound phases go first: background bookkeeping waits for them, never the reverse.

In the service one process holds the commit worker, the registration thread and the ready
solve, and they share one GIL. The solve's LAPACK calls release it, but its Python and numpy
phases (decoding the changed shards' checkpoints, updating the sum) need it, and under a
stream of requests the registration thread (MLflow over SQLAlchemy, all Python) held it for
about half of every second: those phases took about three times their quiet length
(docs/performance.md, "Who holds the cores: the registrar gives way"). The solve marks those
phases with ``hold()``; the registration thread calls ``yield_to_solve()`` between its MLflow
writes and waits there while a phase runs, at most ``max_wait_s`` at a time, so it always moves on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SolveGate"]


class SolveGate:
    """A gate the ready solve holds during its GIL-bound phases; other threads pass it between them.

    ``max_wait_s``: the longest one ``yield_to_solve`` call waits (seconds, >= 0), so a caller
    is delayed, never stopped. Thread-safe; holds nest and may overlap.
    """

    def __init__(self, max_wait_s: float = 0.25) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0 seconds; got {max_wait_s}")
        self.max_wait_s = max_wait_s
        self._changed = threading.Condition()
        self._held = 0
        #: Callers waiting in ``yield_to_solve`` now.
        self.waiting = 0
        #: How many ``yield_to_solve`` calls found the gate held.
        self.waits = 0

    @property
    def held(self) -> bool:
        """Whether a GIL-bound phase of the solve runs now."""
        return self._held > 0

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Mark a GIL-bound phase of the solve: ``yield_to_solve`` callers wait until it ends."""
        with self._changed:
            self._held += 1
        try:
            yield
        finally:
            with self._changed:
                self._held -= 1
                if self._held == 0:
                    self._changed.notify_all()

    def yield_to_solve(self) -> float:
        """Wait while a phase is held, at most ``max_wait_s``; returns the seconds waited (0.0: none held)."""
        if self._held == 0:  # the common case, without the lock
            return 0.0
        began = time.monotonic()
        with self._changed:
            self.waiting += 1
            try:
                self._changed.wait_for(lambda: self._held == 0, timeout=self.max_wait_s)
            finally:
                self.waiting -= 1
            self.waits += 1
        return time.monotonic() - began
