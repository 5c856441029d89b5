"""Sealing a receipt: bound to the stored state and the journal, chained, and anchored outside the store.

``Sealer.seal`` is the last step of every request (erased or not found): the receipt records the
hash of every file the committed version uses (``evidence.state_binding``) and the journal
log's position (``evidence.journal_log``), is appended to the receipt log
(``evidence.receipt_chain``), and its hash is written under S3 Object Lock when
``evidence.anchor_uri`` is set. ``Sealer.anchor`` tags the MLflow run of the newest receipt this
process sealed once that run exists (after registration): as each receipt holds the hash of the
one before, that head anchors the log up to it. Anchors are evidence, not part of the erasure:
one that cannot be written now is logged and written by a later call.
"""

from __future__ import annotations

import hashlib
import logging

from expunge.orchestrator.catalog import EnsembleManifest
from expunge.orchestrator.config import EvidenceConfig
from expunge.orchestrator.erasure.resume import erased_rows, erased_shard_rows, rebuild_receipt
from expunge.orchestrator.errors import ExpungeError
from expunge.orchestrator.evidence.anchors import ObjectLockAnchors, receipt_sha256
from expunge.orchestrator.evidence.journal_log import JournalLog
from expunge.orchestrator.evidence.receipt_chain import append_receipt, chain_key
from expunge.orchestrator.evidence.state_binding import bind_state, binding_of
from expunge.orchestrator.evidence.unsealed import unsealed_versions
from expunge.orchestrator.receipts import ErasureReceipt, StateBinding
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.session import StoreSession

__all__ = ["Sealer"]

log = logging.getLogger(__name__)


class Sealer:
    """Seals the receipts of one store; see the module docstring."""

    def __init__(self, session: StoreSession, lineage: Lineage | None, evidence: EvidenceConfig | None) -> None:
        self.session = session
        self.lineage = lineage
        self.evidence = evidence or EvidenceConfig()
        self._locked: ObjectLockAnchors | None = None
        self._sealed: dict[int, tuple[str, str]] = {}  # sequence -> (request id, sha256) sealed here
        self._unlocked: set[int] = set()  # own receipts whose Object Lock anchor is still to write
        self._mlflow_head = 0  # the newest own receipt anchored in MLflow
        self._clear: tuple[int, int] | None = None  # (latest version, tombstone entries) ``unsealed`` found clear

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
                manifest = catalog.read(receipt.model_version_after)
                update["state"] = bind_state(catalog, manifest, self._previous_binding(manifest))
            except ExpungeError as exc:  # e.g. a resumed request whose version's files were since purged
                log.warning("request %s: state not bound to its receipt (%s)", receipt.request_id, exc)
        sequence, head = JournalLog(self.session.store).head()
        update |= {"journal_sequence": sequence, "journal_head_sha256": head}
        return receipt.model_copy(update=update)

    def _previous_binding(self, manifest: EnsembleManifest) -> StateBinding | None:
        """The binding of the newest earlier commit a receipt bound, through ingests (which bind none).

        Files carried from it unchanged must still hash as bound, so tampering before an ingest is
        not laundered by the erasure after it. A training ends the walk (it starts afresh).
        """
        catalog = self.session.catalog
        number = manifest.parent_version
        while number is not None:
            ancestor = catalog.read(number)
            binding = binding_of(catalog, ancestor)[0]
            if binding is not None or ancestor.kind != "ingest":
                return binding
            number = ancestor.parent_version
        return None

    def seal(self, receipt: ErasureReceipt) -> ErasureReceipt:
        """Bind, chain and anchor ``receipt``; returns the chained receipt.

        The Object Lock anchor is written now (one that cannot be is retried by ``anchor``); the
        MLflow anchor once the request's run exists (``anchor``). Nothing after the append raises.

        Raises:
            StorageConflictError: the receipt log could not be appended to (many writers).
            StorageUnavailableError: the store does not answer.
        """
        try:
            chained = append_receipt(self.session.store, self.bind(receipt))
        except ExpungeError:
            self.session.unfinished = True  # committed but not sealed: this process's next commit seals it first
            raise
        if chained.chain_sequence is not None:
            self._sealed[chained.chain_sequence] = (chained.request_id, receipt_sha256(chained))
            self._lock(chained.chain_sequence)
        return chained

    def unsealed(self) -> list[ErasureReceipt]:
        """The receipts of published erasures whose processes ended before sealing them (a kill after the
        commit: the receipt log lacks them), oldest first; ``evidence.unsealed.unsealed_versions`` finds
        them (the erasure versions after the newest sealed one). Reads only.

        Each is the receipt stored as ``receipts/<version>.json``; if the kill came before even that, the
        receipt rebuilt from durable facts (``resume.rebuild_receipt``: the subjects and rows from the
        request's tombstone entry, the shards from the two versions' manifests; times 0, and the
        request's subjects that had no data are not known).
        """
        catalog = self.session.catalog
        latest = catalog.latest()
        mark = (latest.version if latest is not None else 0, len(catalog.tombstone_log()))
        if mark == self._clear:  # found none at this version and tombstone log: nothing can have appeared
            return []
        receipts = []
        versions = unsealed_versions(catalog)
        for manifest in versions:
            receipt = self._receipt_of(manifest)
            if receipt is not None:
                receipts.append(receipt)
        self._clear = None if versions else mark
        return receipts

    def _receipt_of(self, manifest: EnsembleManifest) -> ErasureReceipt | None:
        """The stored or rebuilt receipt of unsealed erasure ``manifest``; None where it cannot be rebuilt."""
        assert manifest.request_id is not None
        catalog = self.session.catalog
        text = catalog.read_receipt(manifest.version)
        if text is not None:
            return ErasureReceipt.model_validate_json(text)
        rows = erased_rows(catalog, manifest)
        before = catalog.read(manifest.parent_version) if manifest.parent_version is not None else None
        joined = before is not None and manifest.rows != before.rows - sum(rows.values())
        if before is None or (joined and not erased_shard_rows(catalog, manifest)):
            # Rows added beside the erasure (an ingest joined its commit) by a writer whose tombstone entry
            # predates the shards' rows removed: the shards' row counts cannot tell what each lost, so no
            # receipt is rebuilt here; the service resumes the batch it journalled when it starts.
            log.warning(
                "request %s (ensemble v%d) ended before its receipt was stored, and an ingest joined its commit: "
                "its receipt is not rebuilt (the service that journalled it finishes it; until then "
                "`expunge verify --log` names it)",
                manifest.request_id,
                manifest.version,
            )
            return None
        return rebuild_receipt(catalog, manifest.version, manifest.request_id, list(rows))

    def seal_unsealed(self) -> list[ErasureReceipt]:
        """Seal and anchor ``unsealed()``'s receipts, oldest first, so that the receipt log holds every
        committed erasure (MLflow, brought up to date on the next open, would name a request the log
        lacks); returns the chained receipts. A rebuilt receipt is stored as ``receipts/<version>.json``
        first. The newest published version's receipt gets the registry version serving now.

        Raises:
            StorageConflictError, StorageUnavailableError: as ``seal``.
        """
        chained = []
        latest = self.session.catalog.latest()
        for receipt in self.unsealed():
            version = receipt.model_version_after or 0
            newest = latest is not None and version == latest.version  # registered on this open, first
            if self.lineage is not None and receipt.registry_version_after is None and newest:
                try:
                    registered = self.lineage.current_version()
                    receipt = receipt.model_copy(update={"registry_version_after": registered})
                except Exception as exc:  # MLflow down: sealed all the same, without the registry version
                    log.warning("request %s: registry version not known now (%s)", receipt.request_id, exc)
            if self.session.catalog.read_receipt(version) is None:
                self.session.catalog.write_receipt(version, receipt.model_dump_json(indent=1))
            log.warning(
                "request %s: committed as ensemble v%s by a process that ended before sealing its receipt; sealed now",
                receipt.request_id,
                receipt.model_version_after,
            )
            chained.append(self.seal(receipt))
        if chained:
            self.anchor()
        return chained

    def seal_before_commit(self) -> None:
        """``seal_unsealed`` before this process commits (``StoreSession.writing``): a version committed
        over an unsealed erasure puts it below the newest sealed one, where no later writer looks
        (``verify --log`` names it as buried). Clears ``session.unfinished`` once done.

        Raises:
            StorageConflictError, StorageUnavailableError: as ``seal``; nothing is committed then.
        """
        try:
            self.seal_unsealed()
        except ExpungeError as exc:
            self.session.unfinished = True
            log.warning(
                "an erasure committed by a process that ended before sealing its receipt must be sealed before "
                "anything is committed over it, and could not be now (%s: %s); nothing was changed, try again",
                type(exc).__name__,
                exc,
            )
            raise
        self.session.unfinished = False

    def _lock(self, sequence: int) -> bool:
        """Write the Object Lock anchor of own receipt #``sequence``; False (logged) when it cannot be now."""
        if self.locked is None:
            return True
        request_id, sha = self._sealed[sequence]
        try:
            self.locked.write(sequence, request_id, sha)
        except Exception as exc:  # evidence, not the erasure: retried by ``anchor``
            log.warning("receipt #%d: Object Lock anchor not written now (%s: %s)", sequence, type(exc).__name__, exc)
            self._unlocked.add(sequence)
            return False
        self._unlocked.discard(sequence)
        return True

    def anchor(self) -> int:
        """Anchor this process's receipts outside the store; returns the sequence anchored in MLflow (0: none).

        Retries Object Lock anchors that failed. In MLflow it tags the newest receipt this process
        sealed whose request has a run: that receipt holds the hash of the one before, and so on,
        so one anchored head fixes every receipt before it (those of versions the service never
        registered on their own included). Only receipts this process sealed are anchored: a
        receipt someone else appended is never vouched for here. Never raises (logged).
        """
        for sequence in sorted(self._unlocked):
            self._lock(sequence)
        if self.lineage is None:
            return 0
        for sequence in sorted(self._sealed, reverse=True):
            if sequence <= self._mlflow_head:
                break
            request_id, sha = self._sealed[sequence]
            try:
                data = self.session.store.get(chain_key(sequence))
                if hashlib.sha256(data).hexdigest() != sha:
                    log.error("receipt #%d changed since this process sealed it: not anchored", sequence)
                    continue
                previous = ErasureReceipt.model_validate_json(data).previous_receipt_sha256
                if self.lineage.anchor_receipt(request_id, sequence, sha, previous):
                    self._mlflow_head = sequence
                    return sequence
            except Exception as exc:  # evidence, not the erasure: a later call writes it
                log.warning("receipt #%d not anchored in MLflow now (%s: %s)", sequence, type(exc).__name__, exc)
                return 0
        return 0
