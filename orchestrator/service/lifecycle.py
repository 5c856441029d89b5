"""The GDPR lifecycle of the service's requests: find one by what its requester knows, its clock, the list.

A request is found by its request id, its idempotency key or its ticket (in that order). Its
view (``expunge.client.models.Erasure``, the HTTP API's and the export's one shape) adds the
clock to its status: received, due (one calendar month later, plus any extension), done, late.
Subjects appear only as keyed digests.
"""

from __future__ import annotations

import collections
import threading
from datetime import datetime

from expunge.client.models import Erasure, Extension
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError, UnknownRequestError
from expunge.orchestrator.receipts import utc_now
from expunge.orchestrator.request_ids import REQUEST_ID
from expunge.orchestrator.screening import screen_free_text
from expunge.orchestrator.service.board import RequestBoard
from expunge.orchestrator.service.deadlines import MAX_EXTENSION_MONTHS, due_at, is_late, parse_time
from expunge.orchestrator.service.intake import ticket_label
from expunge.orchestrator.service.journal import ExtensionEntry, Journal, JournalEntry, RequestStatus
from expunge.orchestrator.service.policy import request_id_for

__all__ = ["Lifecycle", "ListState", "matches"]

ListState = str  # "pending" | "late" | "done" | "failed"
_STATES = ("pending", "late", "done", "failed")
_CACHED = 50_000


def matches(view: Erasure, state: str | None, due_before: str | None) -> bool:
    """Whether ``view`` belongs in a list filtered by ``state`` and ``due_before`` (pure).

    ``pending``: neither done nor failed; ``late``: pending and past due; ``done``; ``failed``.
    """
    done = view.state == "done"
    failed = view.stage == "failed"
    if state == "pending" and (done or failed):
        return False
    if state == "late" and (done or failed or not view.late):
        return False
    if state == "done" and not done:
        return False
    if state == "failed" and not failed:
        return False
    return due_before is None or parse_time(view.due_at) < parse_time(due_before)


class Lifecycle:
    """Views of the requests of one journal; thread-safe. The service is the only writer of extensions."""

    def __init__(self, journal: Journal, hasher: SubjectHasher, board: RequestBoard) -> None:
        self._journal = journal
        self._hasher = hasher
        self._board = board
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, JournalEntry] = collections.OrderedDict()
        self._extensions: dict[str, ExtensionEntry | None] = {}
        # Done or failed views no longer change: the newest are kept (older ones are read again).
        self._final: collections.OrderedDict[str, Erasure] = collections.OrderedDict()

    # ----- finding --------------------------------------------------------------------------------
    def entry(self, request_id: str) -> JournalEntry | None:
        with self._lock:
            cached = self._entries.get(request_id)
        if cached is not None:
            return cached
        entry = self._journal.entry(request_id) if REQUEST_ID.fullmatch(request_id) else None
        if entry is not None:
            with self._lock:
                self._entries[request_id] = entry
                while len(self._entries) > _CACHED:
                    self._entries.popitem(last=False)
        return entry

    def find(self, ref: str) -> str:
        """The request id that ``ref`` names: a request id, an idempotency key or a ticket, tried in that order.

        A ticket filed with several requests names the one received last.

        Raises:
            UnknownRequestError: nothing in the journal answers to ``ref`` (the message never repeats it whole).
        """
        if not isinstance(ref, str) or not ref.strip() or len(ref) > 256:
            raise UnknownRequestError("give a request id, an idempotency key or a ticket (1-256 characters)")
        if self.entry(ref) is not None:
            return ref
        by_key = request_id_for(self._hasher.label(ref, "idempotency-key"))
        keyed = by_key if (entry := self.entry(by_key)) is not None and entry.idempotent else None
        filed = self._filed(ref)
        ticketed = max(filed, key=lambda e: e.received_at).request_id if filed else None
        if keyed and ticketed and keyed != ticketed:
            raise ConfigError(
                f"that reference is the idempotency key of request {keyed} and the ticket of request {ticketed}: "
                "give the request id"
            )
        if keyed or ticketed:
            return str(keyed or ticketed)
        raise UnknownRequestError(  # the reference is never repeated: a raw id pasted by mistake stays out
            "no request answers to that reference in this service's journal: give the request id that submit "
            "returned, the idempotency key or the ticket it was submitted with"
        )

    def _filed(self, ticket: str) -> list[JournalEntry]:
        """The requests filed under ``ticket`` (the index may hold a stale name: the entry decides)."""
        found = [e for r in self._journal.ticketed(ticket_label(self._hasher, ticket)) if (e := self.entry(r))]
        return [e for e in found if e.ticket == ticket.strip()]

    # ----- views ----------------------------------------------------------------------------------
    def _extension(self, request_id: str) -> ExtensionEntry | None:
        with self._lock:
            if request_id in self._extensions:
                return self._extensions[request_id]
        found = self._journal.extension(request_id)
        with self._lock:
            self._extensions[request_id] = found
        return found

    def view(self, request_id: str, now: datetime) -> Erasure:
        """Where the request stands, with its clock.

        Raises:
            UnknownRequestError: no such request.
        """
        with self._lock:
            final = self._final.get(request_id)
        if final is not None and final.ready_at is None:  # done before its solve was swapped in: ready since?
            recent = self._board.recent(request_id)
            if recent is not None and recent.ready_at is not None:
                final = final.model_copy(update={"ready_at": recent.ready_at})
                with self._lock:
                    self._final[request_id] = final
        if final is not None:
            return final
        entry = self.entry(request_id)
        if entry is None:
            raise UnknownRequestError(f"no request {request_id[:80]!r} in this service's journal")
        status = self._board.status(request_id)
        view = self._of(entry, status, now)
        if view.state == "done" or view.stage == "failed":
            with self._lock:
                self._final[request_id] = view
                while len(self._final) > _CACHED:
                    self._final.popitem(last=False)
        return view

    def _of(self, entry: JournalEntry, status: RequestStatus, now: datetime) -> Erasure:
        extension = self._extension(entry.request_id)
        due = due_at(entry.received_at, extension.months if extension else 0)
        done_at = None
        if status.state == "done" and status.registered_at:
            purged = self._journal.purged_at(entry.request_id) if status.receipt and status.receipt.pending else None
            done_at = max(status.registered_at, purged or status.registered_at, key=parse_time)
        receipt = status.receipt
        return Erasure(
            request_id=entry.request_id,
            ticket=entry.ticket,
            state=status.state,
            stage=status.stage,
            received_at=entry.received_at,
            due_at=due,
            extension=Extension(**extension.model_dump()) if extension else None,
            late=status.stage != "failed" and is_late(due, now, done_at),
            committed_at=status.committed_at,
            ready_at=status.ready_at,
            registered_at=status.registered_at,
            done_at=done_at,
            error=status.error,
            pending=list(status.pending),
            subject_digests=list(entry.subject_digests),
            rows_removed=receipt.rows_removed if receipt else None,
            shards_retrained=[s.shard for s in receipt.shards] if receipt else [],
            model_version=receipt.model_version_after if receipt else None,
            registry_version=receipt.registry_version_after if receipt else None,
            batch_id=receipt.batch_id if receipt else None,
        )

    def list(
        self, now: datetime, state: str | None = None, due_before: str | None = None, ticket: str | None = None
    ) -> list[Erasure]:
        """Every request of the journal that matches the filters, oldest received first.

        Raises:
            ConfigError: an unknown state or a ``due_before`` that is not an ISO 8601 time.
        """
        if state is not None and state not in _STATES:
            raise ConfigError(f"state {state!r}: list pending, late, done or failed")
        if due_before is not None:
            try:
                parse_time(due_before)
            except (TypeError, ValueError):
                raise ConfigError(f"due_before {str(due_before)[:40]!r}: give an ISO 8601 date or time") from None
        ids = sorted(self._journal.ids("requests"))
        if ticket is not None:
            ids = sorted({e.request_id for e in self._filed(ticket)} & set(ids))
        views = [self.view(r, now) for r in ids]
        return sorted((v for v in views if matches(v, state, due_before)), key=lambda v: v.received_at)

    def extend(self, ref: str, months: int, reason: str, now: datetime) -> Erasure:
        """Extend the request's deadline to ``months`` further months in all (1 or 2; Art. 12(3)).

        Allowed only before the original due date (the data subject must be told within the
        first month) and for a request not done. The reason is screened like a request's.

        Raises:
            ConfigError: months not 1 or 2, below an earlier extension, past the first month, or the request done.
            PersonalDataInTextError: the reason names an e-mail address or a phone number.
            UnknownRequestError: ``ref`` names no request.
        """
        request_id = self.find(ref)
        if not isinstance(months, int) or isinstance(months, bool) or not 1 <= months <= MAX_EXTENSION_MONTHS:
            raise ConfigError(f"months must be 1 or {MAX_EXTENSION_MONTHS}: GDPR Art. 12(3) allows two further months")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 1000:
            raise ConfigError("give the reason for the extension (1-1000 characters); it is told to the data subject")
        screen_free_text("reason", reason, ())
        entry = self.entry(request_id)
        assert entry is not None
        current = self.view(request_id, now)
        if current.state == "done" or current.stage == "failed":
            raise ConfigError(f"request {request_id} is {current.state}: there is no deadline left to extend")
        first_due = parse_time(due_at(entry.received_at))
        if now > first_due:
            raise ConfigError(
                f"request {request_id} passed its first due date ({first_due.isoformat()}): Art. 12(3) requires the "
                "extension, and the notice to the data subject, within the first month"
            )
        previous = self._extension(request_id)
        if previous is not None and months < previous.months:
            raise ConfigError(f"request {request_id} is already extended by {previous.months} month(s)")
        extension = ExtensionEntry(months=months, reason=reason.strip(), extended_at=utc_now())
        self._journal.write_extension(request_id, extension)
        with self._lock:
            self._extensions[request_id] = extension
        return self.view(request_id, now)
