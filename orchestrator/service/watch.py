"""Warnings for the GDPR clock: a pending request that is late, or due within a few days, is logged.

``DeadlineWatch`` looks at the journal's pending requests every ``interval_s`` seconds and logs a
warning once per request and kind (late; due soon) in this process, naming the request id, the
ticket and the due date, never a subject.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from expunge.orchestrator.errors import ExpungeError
from expunge.orchestrator.service.deadlines import parse_time
from expunge.orchestrator.service.lifecycle import Lifecycle

__all__ = ["DeadlineWatch"]

log = logging.getLogger(__name__)


class DeadlineWatch:
    """A daemon thread that warns about late and soon-due requests."""

    def __init__(self, lifecycle: Lifecycle, warn_days: int, interval_s: float = 60.0) -> None:
        self.lifecycle = lifecycle
        self.warn_days = warn_days
        self.interval_s = interval_s
        self._told: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="expunge-deadlines", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def check(self, now: datetime) -> list[str]:
        """Warn about what is new since the last check; returns the warnings logged."""
        said = []
        for view in self.lifecycle.list(now, "pending"):
            due = parse_time(view.due_at)
            kind = "late" if view.late else "due soon" if due - now <= timedelta(days=self.warn_days) else None
            if kind is None or (view.request_id, kind) in self._told:
                continue
            self._told.add((view.request_id, kind))
            line = (
                f"erasure request {view.request_id} (ticket {view.ticket or '-'}) is {kind}: received "
                f"{view.received_at}, due {view.due_at}, now {view.state}"
            )
            log.warning("%s", line)
            said.append(line)
        return said

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check(datetime.now(UTC))
            except (ExpungeError, OSError) as exc:  # the store is down for now: try at the next round
                log.info("deadline check skipped: %s", exc)
            self._stop.wait(self.interval_s)
