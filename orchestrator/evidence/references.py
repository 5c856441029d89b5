"""Finding a request in a store by what its requester knows: the request id, the idempotency key or the ticket.

The service journals an idempotency key only as a keyed digest (the request id ``idem-...`` is
derived from it) and indexes tickets by a keyed label, so a key or a ticket is turned into the
same digest and looked up; receipts of erasures run outside the service carry the ticket in
the clear (screened), and are searched too. The reference itself is never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from expunge.orchestrator.catalog import INGEST_RECEIPT_PREFIX, Catalog
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.evidence.receipt_chain import chain_key, chained_sequences
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.request_ids import REQUEST_ID
from expunge.orchestrator.service.intake import ticket_label
from expunge.orchestrator.service.journal import Journal, JournalEntry
from expunge.orchestrator.service.policy import request_id_for

__all__ = ["erased_by", "ingest_named", "resolve_request"]

log = logging.getLogger(__name__)

_MAX_REFERENCE = 256


def _known_id(catalog: Catalog, journal: Journal, request_id: str) -> bool:
    if not REQUEST_ID.fullmatch(request_id):
        return False
    return catalog.read_request_receipt(request_id) is not None or journal.entry(request_id) is not None


def _ticketed_receipts(catalog: Catalog, ticket: str) -> list[tuple[int, str]]:
    """(sequence, request id) of chained receipts whose ticket is ``ticket``, oldest first; a receipt whose
    request id is ``ticket`` comes alone (its by-id copy was lost: a writer killed between the two writes)."""
    found = []
    for sequence in chained_sequences(catalog.store):
        try:
            receipt = ErasureReceipt.model_validate_json(catalog.store.get(chain_key(sequence)))
        except ValueError:
            continue  # an unreadable receipt: the log walk reports it
        if receipt.request_id == ticket:
            return [(sequence, receipt.request_id)]
        if receipt.ticket == ticket:
            found.append((sequence, receipt.request_id))
    return found


def resolve_request(catalog: Catalog, hasher: SubjectHasher, reference: str) -> str:
    """The erasure request id that ``reference`` names: a request id, an idempotency key or a ticket, in that order.

    A ticket filed with several requests names the one received (or chained) last. Reads the
    journal's entries for the key and the ticket label, and, for a ticket, every chained receipt.

    Raises:
        ConfigError: an empty or over-long reference, nothing answers to it (the message never
            repeats it), it names an ingest (``ingest_named``), or it is the idempotency key of one
            request and the ticket of another.
    """
    found = _erasure_named(catalog, hasher, reference)
    if found is None and _ingest_receipt_named(catalog, reference):
        raise ConfigError(
            f"request {reference} is an ingest (its receipt is {INGEST_RECEIPT_PREFIX}/{reference}.json), not an "
            "erasure: verify it as an ingest (`expunge verify --request ID` does, or "
            "expunge.orchestrator.evidence.ingest_verify.verify_ingest)"
        )
    if found is None and (unsealed := _unsealed_named(catalog, reference)) is not None:
        raise ConfigError(unsealed)
    if found is None:
        raise ConfigError(
            f"no request of {catalog.store.uri} answers to that reference: give the request id (`expunge forget` "
            "and `expunge ingest` print it in their receipts), the idempotency key or the ticket it was submitted "
            "with, and check that --config (or --storage) names the store it ran on"
        )
    log.info("reference resolved to request %s", found)
    return found


def ingest_named(catalog: Catalog, hasher: SubjectHasher, reference: str) -> str | None:
    """The ingest request id ``reference`` names, or None: it names an erasure first (``resolve_request``), or nothing.

    Raises:
        ConfigError: an empty or over-long reference, or one that is the idempotency key of one
            request and the ticket of another.
    """
    if _erasure_named(catalog, hasher, reference, quiet=True) is None and _ingest_receipt_named(catalog, reference):
        return reference
    return None


def _unsealed_named(catalog: Catalog, reference: str) -> str | None:
    """Why an erasure the reference names (its request id or ticket, from the tombstone log) has no receipt
    yet, or None. Its entry is written just before its commit: a version of that request means its process
    ended before sealing it; none, that its commit never happened. Reads every manifest (an error path)."""
    ticket = reference.strip()
    named = [
        e.request_id for e in catalog.tombstone_log() if e.action == "erased" and ticket in (e.request_id, e.ticket)
    ]
    if not named:
        return None
    request_id = named[-1]
    versions = [v for v in sorted(catalog.versions()) if catalog.read(v).request_id == request_id]
    if not versions:
        return (
            f"erasure request {request_id} did not commit (its process ended or its commit failed before it): "
            "nothing of it was published; run it again"
        )
    return (
        f"erasure request {request_id} committed version {versions[-1]}, but its receipt is not sealed yet: its "
        "process ended before sealing it. The next writer of the store (any forget, ingest or train) seals it, "
        f"and `expunge forget --request-id {request_id}` with its subjects does at once; verify it then"
    )


def _ingest_receipt_named(catalog: Catalog, reference: str) -> bool:
    return bool(REQUEST_ID.fullmatch(reference)) and catalog.read_ingest_receipt(reference) is not None


def _erasure_named(catalog: Catalog, hasher: SubjectHasher, reference: str, quiet: bool = False) -> str | None:
    """``resolve_request``'s lookup: the erasure request id, or None when no erasure answers to ``reference``.
    ``quiet``: no warning that a ticket names several requests (a lookup before the one that resolves it)."""
    if not isinstance(reference, str) or not reference.strip() or len(reference) > _MAX_REFERENCE:
        raise ConfigError(f"give a request id, an idempotency key or a ticket (1-{_MAX_REFERENCE} characters)")
    journal = Journal(catalog.store)
    if _known_id(catalog, journal, reference):
        return reference
    keyed_id = request_id_for(hasher.label(reference, "idempotency-key"))
    keyed_entry = journal.entry(keyed_id)
    keyed = keyed_id if keyed_entry is not None and keyed_entry.idempotent else None
    ticket = reference.strip()
    filed: list[JournalEntry] = [
        e for r in journal.ticketed(ticket_label(hasher, ticket)) if (e := journal.entry(r)) and e.ticket == ticket
    ]
    named = [e.request_id for e in sorted(filed, key=lambda e: e.received_at)]
    if not named:
        named = [request_id for _, request_id in _ticketed_receipts(catalog, ticket)]
    ticketed = named[-1] if named else None
    if len(set(named)) > 1 and not quiet:  # e.g. a killed forget run again without its request id
        log.warning(
            "that ticket names %d requests (%s); taking the newest, %s: give a request id to check another",
            len(set(named)),
            ", ".join(dict.fromkeys(named)),
            ticketed,
        )
    if ticketed is not None and not quiet:  # an erasure under the same ticket whose receipt is not sealed yet
        unsealed = [e.request_id for e in catalog.tombstone_log() if e.ticket == ticket and e.request_id not in named]
        if unsealed:
            log.warning(
                "that ticket also names request(s) %s, committed or attempted after a kill but not sealed yet: "
                "verifying %s; the next writer of the store seals the other(s)",
                ", ".join(dict.fromkeys(unsealed)),
                ticketed,
            )
    if keyed and ticketed and keyed != ticketed:
        raise ConfigError(
            f"that reference is the idempotency key of request {keyed} and the ticket of request {ticketed}: "
            "give the request id"
        )
    return keyed or ticketed


def erased_by(catalog: Catalog, digests: Sequence[str], before: str | None = None) -> dict[str, str]:
    """Digest -> id of the request whose erasure of it stands (the last one, not re-admitted since), for those
    of ``digests`` erased earlier, in the order of those erasures: where a retry that found nobody (e.g. a killed forget run again without
    its request id) points its requester. ``before``: an ISO time; entries written later are not read (the
    subjects' state when a stored receipt was made, not after a re-admission and a later erasure)."""
    wanted = set(digests)
    by: dict[str, tuple[int, str]] = {}
    for entry in catalog.tombstone_log():
        if before is not None and entry.created_at > before:
            break
        for digest in wanted.intersection(entry.subject_digests):
            if entry.action == "erased":
                by[digest] = (entry.sequence, entry.request_id)
            else:
                by.pop(digest, None)
    return {d: request for d, (_, request) in sorted(by.items(), key=lambda item: item[1])}  # oldest erasure first
