"""Turning a caller's erasure request into a journal entry: checked, screened, digested, clocked.

Everything here runs before anything is stored, so a refusal changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from expunge.orchestrator.config import ServiceConfig
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.screening import MAX_REASON, MAX_TICKET, clean_text, screen_free_text
from expunge.orchestrator.service.deadlines import due_at, parse_received_at, parse_time
from expunge.orchestrator.service.journal import JournalEntry
from expunge.orchestrator.service.policy import (
    check_idempotency_key,
    check_subject_count,
    check_subject_list,
    request_id_for,
)
from expunge.shards.identity import canonical_subject_ids

__all__ = ["Queued", "new_entry", "ticket_label"]


@dataclass
class Queued:
    """An accepted erasure request waiting for the worker, and since when (monotonic seconds)."""

    entry: JournalEntry
    since: float


_SUB_RESOURCES = ("/evidence", "/extension")


def ticket_label(hasher: SubjectHasher, ticket: str) -> str:
    """The keyed label a ticket is indexed under (``journal/tickets/<label>/``)."""
    return hasher.label(ticket.strip(), "ticket")


def new_entry(
    hasher: SubjectHasher,
    config: ServiceConfig,
    subject_ids: Sequence[object],
    idempotency_key: str | None,
    reason: str | None,
    ticket: str | None,
    received_at: str | None,
    now: str,
) -> JournalEntry:
    """The journal entry of a new request, received ``now`` (UTC ISO text) unless ``received_at`` says when.

    Raises:
        ConfigError: no subject, too many, a bad idempotency key, reason or ticket, or a bad receipt date.
        InvalidSubjectIdError: an id the identity rule refuses.
        PersonalDataInTextError: the reason or the ticket names a subject of the request, an
            e-mail address or a phone number.
    """
    ids = check_subject_list(subject_ids)
    check_subject_count(len(ids), config.max_subjects_per_request)
    canonical = canonical_subject_ids(ids, "the request")
    reason = clean_text("reason", reason, MAX_REASON)
    ticket = clean_text("ticket", ticket, MAX_TICKET)
    for field, text in (("ticket", ticket), ("idempotency key", idempotency_key)):
        # A reference ending like a sub-resource would name that sub-resource in GET /v1/erasures/{ref}/...
        if isinstance(text, str) and text.rstrip().endswith(_SUB_RESOURCES):
            raise ConfigError(f"the {field} must not end in {' or '.join(_SUB_RESOURCES)}; drop that suffix")
    screen_free_text("reason", reason, canonical)
    screen_free_text("ticket", ticket, canonical)
    received = now if received_at is None else parse_received_at(received_at, parse_time(now))
    if idempotency_key is not None:
        request_id = request_id_for(hasher.label(check_idempotency_key(idempotency_key), "idempotency-key"))
    else:
        request_id = f"req-{uuid.uuid4().hex[:24]}"
    return JournalEntry(
        request_id=request_id,
        subject_digests=tuple(dict.fromkeys(hasher.digest_many(canonical))),
        received_at=received,
        reason=reason,
        idempotent=idempotency_key is not None,
        ticket=ticket,
        due_at=due_at(received),
    )
