"""The facts an erasure certificate shows beyond the verify report, read from the store: timeline and chain anchor."""

from __future__ import annotations

import hashlib

from expunge.orchestrator.catalog import Catalog
from expunge.orchestrator.evidence.certificate import CertificateFacts
from expunge.orchestrator.evidence.receipt_chain import chain_key, chained_receipts
from expunge.orchestrator.evidence.report import VerifyReport
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.shards.store import ObjectStore

__all__ = ["certificate_facts"]


def certificate_facts(store: ObjectStore, report: VerifyReport) -> CertificateFacts:
    """When the request was received, due, committed and done, and where its receipt sits in the receipt log.

    ``report``: what ``verify_erasure`` returned for the request (its ``batch_id`` names the shared
    commit of a coalesced request). The service's journal gives received and due (and the
    registration of a served request); the chained receipt gives the rest. Reads only.

    Raises:
        StorageCorruptError: a journal entry or receipt that cannot be read.
    """
    from expunge.orchestrator.service.journal import Journal  # evidence reads the journal; it does not run it

    committed = report.batch_id or report.request_id
    chained = chained_receipts(store, committed)
    receipt: ErasureReceipt | None = chained[-1][1] if chained else None
    sha256 = hashlib.sha256(store.get(chain_key(chained[-1][0]))).hexdigest() if chained else None
    if receipt is None:
        text = Catalog(store).read_request_receipt(committed)
        receipt = ErasureReceipt.model_validate_json(text) if text is not None else None
    journal = Journal(store)
    entry = journal.entry(report.request_id)
    status = journal.status(report.request_id) if entry is not None else None
    own = status.receipt if status is not None and status.receipt is not None else receipt
    return CertificateFacts(
        ticket=(entry.ticket if entry is not None else None) or (own.ticket if own is not None else None),
        reason=(entry.reason if entry is not None else None) or (own.reason if own is not None else None),
        journalled=entry is not None,
        received_at=entry.received_at if entry is not None else None,
        due_at=entry.due_at if entry is not None else None,
        committed_at=(status.committed_at if status is not None else None)
        or (receipt.committed_at if receipt is not None else None),
        registered_at=(status.registered_at if status is not None else None)
        or (receipt.registered_at if receipt is not None else None),
        chain_sequence=chained[-1][0] if chained else None,
        receipt_sha256=sha256,
        previous_receipt_sha256=receipt.previous_receipt_sha256 if receipt is not None else None,
    )
