"""Restarting the erasure service: what a crash left open in the journal, and what to do with each part."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from expunge.orchestrator.receipts import ErasureReceipt, utc_now
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.service.followup import Committed
from expunge.orchestrator.service.journal import BatchEntry, Journal, JournalEntry, Registration

__all__ = ["Recovery", "recover", "serve_purpose"]

log = logging.getLogger(__name__)


def serve_purpose(namespace: str) -> str:
    """What the service's write lease says it is: a second ``serve`` of the same namespace finds it, not a rival."""
    return f"expunge serve (namespace {namespace})"


@dataclass
class Recovery:
    """Batches to resume under their own ids (oldest first) and requests to queue again (oldest first)."""

    resume: list[tuple[BatchEntry, list[JournalEntry]]] = field(default_factory=list)
    queued: list[JournalEntry] = field(default_factory=list)
    #: Committed requests whose receipts left steps pending (a purge, the receipt log), not yet done.
    repairs: list[ErasureReceipt] = field(default_factory=list)
    #: Not-found batches committed but not registered: registration records their MLflow runs, as it
    #: does for a live one (a found batch's version is registered when the coordinator opens).
    unregistered: list[Committed] = field(default_factory=list)


def recover(journal: Journal, lineage: Lineage | None) -> Recovery:
    """Read the journal of a service that died: resume its open batches, requeue its loose requests.

    Commits the registry already covers (opening the coordinator reconciled MLflow with the
    store) are marked registered here. Half-written journal files are swept first.
    """
    # Only the service writes journal/, and the one before this is dead: its half-written
    # temporary files (a kill mid-write) are debris, and an unacknowledged request at most.
    journal.sweep_partial_writes()
    accepted = journal.ids("requests")
    committed = journal.ids("committed")
    registered = journal.ids("registered")
    failed = journal.ids("failed")
    open_ids = accepted - committed - failed
    # Answered at the seal, killed before the journal stage wrote them: the sealed answer is journalled
    # as given. Resumed instead, a batch that found nobody would run (and be sealed) a second time.
    sealed = _journal_sealed(journal, open_ids)
    committed |= sealed
    open_ids -= sealed
    plan = Recovery()
    in_batches: set[str] = set()
    for batch in sorted(journal.batches(), key=lambda b: b.created_at):
        members = [r for r in batch.request_ids if r in open_ids]
        if not members:
            journal.drop_batch(batch.batch_id)
            continue
        entries = [e for r in members if (e := journal.entry(r)) is not None]
        plan.resume.append((batch, entries))
        in_batches |= set(members)
    loose = [e for r in sorted(open_ids - in_batches) if (e := journal.entry(r)) is not None]
    plan.queued = sorted(loose, key=lambda e: e.received_at)
    purged = journal.ids("purged")
    for request_id in sorted(committed - purged):
        status = journal.status(request_id)
        if status is not None and status.receipt is not None and status.pending:
            plan.repairs.append(status.receipt)
    pending = committed - registered
    if pending and lineage is not None:
        plan.unregistered = _not_found_batches(journal, pending)
        pending -= {own.request_id for item in plan.unregistered for own in item.receipts}
    if pending:
        version = lineage.current_version() if lineage else None
        registration = Registration(registered_at=utc_now(), registry_version=version)
        for request_id in pending:
            journal.write_registered(request_id, registration)
    if plan.resume or plan.queued or pending or plan.unregistered:
        log.warning(
            "journal: resuming %d interrupted batch(es), %d queued request(s); %d registration(s) finished, "
            "%d not-found batch(es) to record",
            len(plan.resume),
            len(plan.queued),
            len(pending),
            len(plan.unregistered),
        )
    return plan


def _not_found_batches(journal: Journal, pending: set[str]) -> list[Committed]:
    """The not-found requests among ``pending`` (committed, not registered), grouped by their batch.

    Each group's batch receipt is rebuilt from its requests' own (``policy.split_receipt`` in
    reverse): the batch's id, and every subject of the group, none found.
    """
    groups: dict[str, list[ErasureReceipt]] = {}
    for request_id in sorted(pending):
        status = journal.status(request_id)
        receipt = status.receipt if status is not None else None
        if receipt is not None and receipt.status == "not_found":
            groups.setdefault(receipt.batch_id or receipt.request_id, []).append(receipt)
    batches = []
    for batch_id, receipts in groups.items():
        digests = tuple(dict.fromkeys(d for r in receipts for d in r.subject_digests))
        earlier = tuple(dict.fromkeys(d for r in receipts for d in r.already_erased_digests))
        alone = len(receipts) == 1 and receipts[0].batch_id is None
        batch = receipts[0].model_copy(
            update={"request_id": batch_id, "batch_id": None, "subject_digests": digests, "not_found_digests": digests}
            | {"already_erased_digests": earlier}
            | ({} if alone else {"ticket": None, "reason": None})
        )
        batches.append(Committed(receipts, batch))
    return batches


def _journal_sealed(journal: Journal, open_ids: set[str]) -> set[str]:
    """Write the committed record of each open request whose batch commit was sealed; returns their ids."""
    written: set[str] = set()
    for batch in journal.batches():
        for request_id in batch.request_ids:
            entry = journal.entry(request_id) if request_id in open_ids else None
            receipt = journal.sealed_in_open_batch(entry) if entry is not None else None
            if receipt is not None:
                journal.write_committed(receipt)
                written.add(request_id)
    return written
