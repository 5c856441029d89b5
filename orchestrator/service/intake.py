"""Turning a caller's erasure request into a journal entry: checked, screened, digested, clocked.

Everything here runs before anything is stored, so a refusal changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from expunge.orchestrator.config import ServiceConfig
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.service.deadlines import due_at, parse_received_at, parse_time
from expunge.orchestrator.service.journal import JournalEntry
from expunge.orchestrator.service.policy import (
    check_idempotency_key,
    check_subject_count,
    check_subject_list,
    request_id_for,
)
from expunge.orchestrator.service.screening import screen_free_text
from expunge.shards.identity import canonical_subject_ids

__all__ = ["new_entry", "ticket_label"]

_MAX_REASON, _MAX_TICKET = 1000, 200
_SUB_RESOURCES = ("/evidence", "/extension")


def ticket_label(hasher: SubjectHasher, ticket: str) -> str:
    """The keyed label a ticket is indexed under (``journal/tickets/<label>/``)."""
    return hasher.label(ticket.strip(), "ticket")


def _text(field: str, value: object, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit or not value.isprintable():
        raise ConfigError(
            f"{field} must be 1-{limit} printable characters on one line (e.g. a ticket reference), or omitted"
        )
    return value.strip()


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
    reason = _text("reason", reason, _MAX_REASON)
    ticket = _text("ticket", ticket, _MAX_TICKET)
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
