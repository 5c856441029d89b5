"""Where each request of the erasure service stands: recent statuses in memory, all in the journal; waiting."""

from __future__ import annotations

import collections
import threading
import time
from datetime import UTC, datetime
from typing import Literal

from expunge.orchestrator.errors import ConfigError, ErasureWaitTimeout, ExpungeError, UnknownRequestError
from expunge.orchestrator.request_ids import REQUEST_ID
from expunge.orchestrator.service.deadlines import parse_time
from expunge.orchestrator.service.journal import Journal, RequestStatus
from expunge.orchestrator.service.policy import check_timeout
from expunge.orchestrator.service.views import StageClock

__all__ = ["RequestBoard"]

#: Statuses kept in memory for fast ``status``/``wait`` (older ones are read from the journal).
_RECENT = 20_000


class RequestBoard:
    """Request statuses for ``status``/``wait``: the newest in memory, any other read from the journal.

    Shares the service's condition: ``remember`` is called with it held, and every change is
    announced with ``notify_all`` by the caller, which wakes ``wait``.
    """

    def __init__(self, journal: Journal, changed: threading.Condition, store_uri: str) -> None:
        self._journal = journal
        self._changed = changed
        self._store_uri = store_uri
        self._recent: collections.OrderedDict[str, RequestStatus] = collections.OrderedDict()
        #: Latency from receipt to each stage, of the requests this process moved there (``/metrics``);
        #: requests received before it started (a backlog import, a restart) are left out.
        self.clock = StageClock()
        self._since = datetime.now(UTC)

    def remember(self, status: RequestStatus) -> None:
        """Record a request's new status (the caller holds the condition)."""
        before = self._recent.get(status.request_id)
        reached = status.committed_at if status.stage == "committed" else status.registered_at
        moved = before is None or before.stage != status.stage
        if reached and status.stage in ("committed", "registered") and moved:
            received = parse_time(status.received_at)
            if received >= self._since:
                self.clock.observe(status.stage, (parse_time(reached) - received).total_seconds())
        self._recent[status.request_id] = status
        self._recent.move_to_end(status.request_id)
        while len(self._recent) > _RECENT:
            self._recent.popitem(last=False)

    def recent(self, request_id: str) -> RequestStatus | None:
        """The status in memory, if the request is recent."""
        with self._changed:
            return self._recent.get(request_id)

    def status(self, request_id: str) -> RequestStatus:
        """Where ``request_id`` stands (accepted, committed, registered or failed), with timestamps.

        Raises:
            UnknownRequestError: the journal holds no such request.
        """
        if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
            raise UnknownRequestError(
                f"{str(request_id)[:80]!r} is not a request id: use the id that submit/forget returned "
                "(receipt.request_id)"
            )
        cached = self.recent(request_id)
        if cached is not None:
            return cached
        stored = self._journal.status(request_id)
        if stored is None:
            raise UnknownRequestError(
                f"no request {str(request_id)[:80]!r} in the journal of {self._store_uri}: use the id "
                "that submit/forget returned (receipt.request_id)"
            )
        return stored

    def wait(
        self, request_id: str, stage: Literal["committed", "registered"] = "committed", timeout: float | None = None
    ) -> RequestStatus:
        """Block until ``request_id`` reaches ``stage`` (or fails); returns its status.

        Raises:
            ConfigError: an unknown stage.
            UnknownRequestError: no such request.
            ErasureWaitTimeout: ``timeout`` seconds passed first.
            ExpungeError: the request failed; the error says why.
        """
        if stage not in ("committed", "registered"):
            raise ConfigError(f"stage {stage!r}: wait for 'committed' or 'registered'")
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(request_id)  # memory first, else the journal
            if status.stage == "failed":
                raise ExpungeError(
                    f"request {request_id} failed: {status.error}. Nothing was erased by it; fix the cause, then "
                    "submit again with a new idempotency key"
                )
            if status.reached(stage):
                return status
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ErasureWaitTimeout(
                    f"request {request_id} is {status.stage}, not yet {stage}, after {timeout} s; it goes on: "
                    "call wait again or status later"
                )
            with self._changed:
                current = self._recent.get(request_id)
                if current is None or not (current.stage == "failed" or current.reached(stage)):
                    self._changed.wait(timeout=min(left, 5.0) if left is not None else 5.0)
