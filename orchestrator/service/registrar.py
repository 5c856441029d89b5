"""The service's registration thread: MLflow catches up with the commits beside them, never in their way."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from expunge.orchestrator.config import ServiceConfig
from expunge.orchestrator.service.followup import FollowUp
from expunge.orchestrator.service.policy import next_step
from expunge.orchestrator.serving.solve_gate import SolveGate
from expunge.shards.niceness import nicer_thread

__all__ = ["Registrar"]

log = logging.getLogger(__name__)


class Registrar:
    """Runs ``FollowUp.register`` on its own thread, when ``policy.next_step`` says a registration is due.

    Due means: nothing is queued, or the oldest unregistered commit is ``service.register_within_s``
    old. One registration covers every commit before it, so under a stream the registrations
    stay few. The commit worker never waits for it (``FollowUp.registering`` is its own lock).
    ``queue`` gives (requests queued, seconds the oldest waited); ``stopping`` the service's stop flag.
    ``gate``: the ready solve's; the registration yields to its GIL-bound phases between MLflow writes
    (each wait at most ``SolveGate.max_wait_s``), since ready to serve is what people wait for. The
    thread runs ``service.registration_nice_increment`` nicer than the others (``nicer_thread``).
    """

    def __init__(
        self,
        follow: FollowUp,
        state: threading.Condition,
        config: ServiceConfig,
        queue: Callable[[], tuple[int, float]],
        stopping: Callable[[], bool],
        gate: SolveGate | None = None,
    ) -> None:
        self._follow = follow
        self._gate = gate if gate is not None else SolveGate()  # one nobody holds: never waits
        self._state = state
        self._config = config
        self._queue = queue
        self._stopping = stopping
        self._thread = threading.Thread(target=self._run, name="expunge-register", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait for the registration under way (if any) after the service set its stop flag."""
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    def _due(self) -> bool:
        """Wait (holding ``state``) until a registration is due; False when the service stops."""
        while not self._stopping():
            unregistered = self._follow.unregistered
            clock = time.monotonic()
            queued, oldest_queued_s = self._queue()
            age = clock - unregistered[0].since if unregistered else 0.0
            step = next_step(
                queued,
                oldest_queued_s,
                len(unregistered),
                age,
                self._config.window_ms / 1000,
                self._config.register_within_s,
            )
            if step.kind == "register":
                return True
            # Woken by every submit and commit; otherwise when the oldest commit's lag runs out.
            self._state.wait(timeout=max(self._config.register_within_s - age, 0.01) if unregistered else None)
        return False

    def _run(self) -> None:
        try:  # gives way to commits and the ready solve; a failure here must not end the thread
            nicer_thread(self._config.registration_nice_increment)
        except Exception:
            log.exception("the registration thread keeps its niceness")
        while True:
            with self._state:
                if not self._due():
                    return  # unregistered commits stay journalled: the next start registers them
            try:
                self._follow.register(self._gate.yield_to_solve)
            except Exception:  # the thread must outlive any one registration; the commits stand
                log.exception("the service's registration thread hit an unexpected error; it goes on")
                time.sleep(1.0)
