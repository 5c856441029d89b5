"""After the commit: the steps a receipt left pending, retried; and re-admission of erased subjects."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence

from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.evidence.receipt_chain import chained_receipts
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.request_ids import check_request_id
from expunge.orchestrator.screening import screen_request_text
from expunge.orchestrator.session import StoreSession
from expunge.orchestrator.store_purge import purge_unreferenced

__all__ = ["finish_pending", "pending_step", "readmit"]

log = logging.getLogger(__name__)


def pending_step(step: str, exc: BaseException) -> str:
    """``"<step>: <cause>"`` for ``ErasureReceipt.pending`` (logged as a warning: it is retried)."""
    cause = f"{type(exc).__name__}: {exc}"[:500]
    log.warning("after the commit, %s did not succeed (%s); it is retried", step, cause)
    return f"{step}: {cause}"


def finish_pending(
    session: StoreSession,
    receipt: ErasureReceipt,
    sync_lineage: Callable[[], None],
    chain: Callable[[ErasureReceipt], ErasureReceipt],
) -> ErasureReceipt:
    """Retry the steps ``receipt.pending`` names; returns the receipt with those that still fail.

    Idempotent: a purge deletes only what the published version does not reference, a
    registration reconciles MLflow with the store, and the receipt log gains the receipt
    only if it lacks it. The returned receipt is chained when the log gained it here.
    ``sync_lineage`` reconciles MLflow with the store; ``chain`` seals a receipt into the log.

    Raises:
        StoreBusyError: another process holds the store's write lease.
    """
    if not receipt.pending:
        return receipt
    steps = [p.split(":", 1)[0] for p in receipt.pending]
    left: list[str] = []
    with session.lease.hold("expunge forget"):
        session.follow_latest()
        latest = session.require_manifest()
        for step in ("purge", "receipt", "registration"):
            if step not in steps:
                continue
            try:
                if step == "purge":
                    deleted = purge_unreferenced(session.store, session.catalog, latest)
                    receipt = receipt.model_copy(
                        update={"deleted_objects": (*receipt.deleted_objects, *(str(v) for v in deleted))}
                    )
                elif step == "receipt" and receipt.model_version_after is not None:
                    session.catalog.write_receipt(receipt.model_version_after, receipt.model_dump_json(indent=1))
                elif step == "registration":
                    sync_lineage()
            except Exception as exc:  # after the commit a failed step stays pending
                left.append(pending_step(step, exc))
        receipt = receipt.model_copy(update={"pending": tuple(left)})
        if "receipt log" in steps:
            chained = [r for _, r in chained_receipts(session.store, receipt.request_id)]
            receipt = chained[-1] if chained else chain(receipt)
    return receipt


def check_readmission(subject_ids: Sequence[object], reason: str, request_id: str | None = None) -> tuple[str, str]:
    """The reason as it will be recorded and the request id, or a typed error before anything is written.

    Raises:
        ConfigError: an empty or unusable reason, no subject named, a bad subject id or request id.
        PersonalDataInTextError: the reason names one of the subjects, an e-mail address or a
            phone number (it is kept in the tombstone log, outside the shard data).
    """
    if not isinstance(reason, str) or not reason.strip():
        raise ConfigError("re-admitting a subject needs a reason (e.g. the consent ticket); pass --reason TEXT")
    if not subject_ids:
        raise ConfigError("name at least one subject to re-admit with --subject ID")
    from expunge.shards.identity import canonical_subject_ids

    screened, _ = screen_request_text(reason, None, canonical_subject_ids(subject_ids, "the request"))
    return screened or reason.strip(), check_request_id(request_id or f"readmit-{uuid.uuid4().hex[:12]}")


def readmit(session: StoreSession, subject_ids: Sequence[object], reason: str, request_id: str | None = None) -> int:
    """Lift the tombstones of subjects who gave new consent; returns how many were tombstoned.

    Recorded in the store's tombstone log with the reason. The subjects' rows are not
    restored: a later ``train`` on data that holds them admits them again.

    Raises:
        ConfigError: an empty or unusable reason, or no subject named.
        PersonalDataInTextError: the reason names one of the subjects, an e-mail address or a
            phone number (it is kept in the tombstone log, outside the shard data).
    """
    reason, request_id = check_readmission(subject_ids, reason, request_id)
    digests = list(dict.fromkeys(session.hasher.digest_many(subject_ids)))
    with session.lease.hold("expunge readmit"):
        erased = session.catalog.tombstones()
        session.catalog.append_tombstones("readmitted", digests, request_id, reason)
    return sum(d in erased for d in digests)
