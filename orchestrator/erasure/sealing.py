"""Sealing a receipt: bound to the stored state and the journal, chained, and anchored outside the store.

``Sealer.seal`` is the last step of every request (erased or not found): the receipt records the
hash of every file the committed version uses (``evidence.state_binding``) and the journal
log's position (``evidence.journal_log``), is appended to the receipt log
(``evidence.receipt_chain``), and its hash is written under S3 Object Lock when
``evidence.anchor_uri`` is set. ``Sealer.anchor`` tags the MLflow runs of chained receipts
with their hashes once the runs exist (after registration). Anchors are evidence, not part of
the erasure: one that cannot be written now is logged and written by a later call.
"""

from __future__ import annotations

import hashlib
import logging

from expunge.orchestrator.config import EvidenceConfig
from expunge.orchestrator.errors import ExpungeError
from expunge.orchestrator.evidence.anchors import ObjectLockAnchors, receipt_sha256
from expunge.orchestrator.evidence.journal_log import JournalLog
from expunge.orchestrator.evidence.receipt_chain import append_receipt, chain_key, chained_sequences
from expunge.orchestrator.evidence.state_binding import bind_state
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.session import StoreSession

__all__ = ["Sealer"]

log = logging.getLogger(__name__)

#: How many of the newest chained receipts one ``anchor`` call tags in MLflow at most.
_ANCHOR_WINDOW = 50


class Sealer:
    """Seals the receipts of one store; see the module docstring."""

    def __init__(self, session: StoreSession, lineage: Lineage | None, evidence: EvidenceConfig | None) -> None:
        self.session = session
        self.lineage = lineage
        self.evidence = evidence or EvidenceConfig()
        self._locked: ObjectLockAnchors | None = None
        self._mlflow_done: set[int] = set()  # sequences this process tagged in MLflow

    @property
    def locked(self) -> ObjectLockAnchors | None:
        """The Object Lock anchors (None when ``evidence.anchor_uri`` is not set)."""
        if self._locked is None and self.evidence.anchor_uri:
            self._locked = ObjectLockAnchors(
                self.evidence.anchor_uri, self.evidence.anchor_retention_days, self.session.store.config
            )
        return self._locked

    def bind(self, receipt: ErasureReceipt) -> ErasureReceipt:
        """``receipt`` with the stored state of its committed version and the journal's position."""
        update: dict[str, object] = {}
        if receipt.status == "erased" and receipt.state is None and receipt.model_version_after is not None:
            catalog = self.session.catalog
            try:
                update["state"] = bind_state(catalog, catalog.read(receipt.model_version_after))
            except ExpungeError as exc:  # e.g. a resumed request whose version's files were since purged
                log.warning("request %s: state not bound to its receipt (%s)", receipt.request_id, exc)
        sequence, head = JournalLog(self.session.store).head()
        update |= {"journal_sequence": sequence, "journal_head_sha256": head}
        return receipt.model_copy(update=update)

    def seal(self, receipt: ErasureReceipt) -> ErasureReceipt:
        """Bind, chain and anchor ``receipt``; returns the chained receipt.

        Raises:
            StorageConflictError: the receipt log could not be appended to (many writers).
            StorageUnavailableError: the store does not answer.
        """
        chained = append_receipt(self.session.store, self.bind(receipt))
        if self.locked is not None and chained.chain_sequence is not None:
            try:
                self.locked.write(chained.chain_sequence, chained.request_id, receipt_sha256(chained))
            except ExpungeError as exc:
                log.warning("receipt #%d: Object Lock anchor not written now (%s)", chained.chain_sequence, exc)
        return chained

    def anchor(self) -> int:
        """Anchor the newest chained receipts outside the store (MLflow tags, Object Lock); returns how many.

        Idempotent; a receipt whose MLflow run does not exist yet is tagged by a later call.
        Never raises for an anchor that cannot be written now (logged).
        """
        store = self.session.store
        try:
            sequences = chained_sequences(store)[-_ANCHOR_WINDOW:]
            locked = self.locked.sequences() if self.locked is not None else set()
        except ExpungeError as exc:
            log.warning("receipt anchors not brought up to date now (%s)", exc)
            return 0
        done = 0
        for sequence in sequences:
            needs_mlflow = self.lineage is not None and sequence not in self._mlflow_done
            needs_lock = self.locked is not None and sequence not in locked
            if not (needs_mlflow or needs_lock):
                continue
            try:
                data = store.get(chain_key(sequence))
                receipt = ErasureReceipt.model_validate_json(data)
                sha = hashlib.sha256(data).hexdigest()
                if needs_lock and self.locked is not None:
                    self.locked.write(sequence, receipt.request_id, sha)
                if needs_mlflow and self.lineage is not None:
                    runs = self.lineage.anchor_receipt(
                        receipt.request_id, sequence, sha, receipt.previous_receipt_sha256
                    )
                    if runs:
                        self._mlflow_done.add(sequence)
                done += 1
            except Exception as exc:  # evidence, not the erasure: a later call writes it
                log.warning("receipt #%d not anchored now (%s: %s)", sequence, type(exc).__name__, exc)
                break
        return done
