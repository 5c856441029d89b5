"""The whole evidence trail walked at once: the receipt log, its anchors, the journal log and the stored state.

``audit_trail`` is what ``expunge verify --log`` reports and what verify's ``receipt_log`` check
relies on. On top of ``walk_chain`` (links, copies, MLflow request ids) it compares every
receipt with its anchors outside the store (MLflow run tags; S3 Object Lock when
``evidence.anchor_uri`` is set), so a resealed log is tampering; walks the journal log up to
the position the newest receipt recorded, so a deleted or cut journal is loss; and checks the
published version's files against the receipt that binds them.
"""

from __future__ import annotations

import logging

from expunge.orchestrator.catalog import Catalog, EnsembleManifest
from expunge.orchestrator.config import EvidenceConfig
from expunge.orchestrator.evidence.anchors import Anchor, ObjectLockAnchors, compare_anchors
from expunge.orchestrator.evidence.journal_log import walk_journal
from expunge.orchestrator.evidence.receipt_chain import BrokenLink, ChainReport, chain_key, walk_chain
from expunge.orchestrator.evidence.state_binding import check_state, newest_binding
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.registry.checks import AuditView

__all__ = ["audit_trail"]

log = logging.getLogger(__name__)


def _journal_reached(catalog: Catalog, chain: ChainReport) -> tuple[int, str | None]:
    """The journal position the newest readable receipt recorded (0, None when none did)."""
    for sequence in range(chain.receipts, 0, -1):
        try:
            receipt = ErasureReceipt.model_validate_json(catalog.store.get(chain_key(sequence)))
        except Exception:  # missing or unreadable: the chain walk reports it
            continue
        return receipt.journal_sequence, receipt.journal_head_sha256
    return 0, None


def audit_trail(
    catalog: Catalog, latest: EnsembleManifest, view: AuditView | None, evidence: EvidenceConfig | None
) -> ChainReport:
    """Walk the receipt log and every anchor, the journal log and the published state; see the module docstring.

    ``view``: the MLflow registry of the store (None: no MLflow witness or anchor). Reads every
    receipt, anchor, journal log entry and journal object once, and every file of the published
    version once. Writes nothing.

    Raises:
        StorageUnavailableError: the store or the anchor bucket does not answer.
        TrackingUnreachable: MLflow does not answer.
    """
    store = catalog.store
    chain = walk_chain(store, view.request_ids() if view is not None else None)
    broken = list(chain.broken)
    warnings = list(chain.warnings)
    witnesses = list(chain.witnesses)
    anchors: list[Anchor] = []
    if view is not None:
        anchors += [
            Anchor(
                sequence=a.sequence,
                request_id=a.request_id,
                receipt_sha256=a.receipt_sha256,
                where=f"MLflow run {a.run_id}",
            )
            for a in view.chain_anchors()
        ]
        witnesses.append("MLflow anchors")
    if evidence is not None and evidence.anchor_uri:
        locked, rewritten = ObjectLockAnchors(evidence.anchor_uri, evidence.anchor_retention_days, store.config).read()
        anchors += locked
        broken += rewritten
        witnesses.append("S3 Object Lock anchors")
    broken += compare_anchors(store, anchors)
    anchored = {a.sequence for a in anchors}
    if anchors and (unanchored := [s for s in range(1, chain.receipts + 1) if s not in anchored]):
        warnings.append(
            BrokenLink(
                sequence=unanchored[0],
                key=chain_key(unanchored[0]),
                problem=f"{len(unanchored)} receipt(s) have no anchor yet, the first #{unanchored[0]} (anchored after "
                "registration; receipts from before anchors existed never are)",
            )
        )
    reached, reached_sha = _journal_reached(catalog, chain)
    journal = walk_journal(store, reached, reached_sha)
    broken += [BrokenLink(sequence=None, key="journal/log", problem=p) for p in journal.broken]
    warnings += [BrokenLink(sequence=None, key="journal", problem=p) for p in journal.warnings]
    witnesses.append(f"journal log ({journal.entries} entries)")
    binding, sequence = newest_binding(catalog, latest.version)
    if binding is not None:
        broken += [BrokenLink(sequence=sequence, key="state", problem=p) for p in check_state(catalog, latest, binding)]
        witnesses.append(f"stored state of version {latest.version}")
    report = chain.model_copy(
        update={
            "broken": tuple(sorted(broken, key=lambda b: (b.sequence is None, b.sequence or 0, b.key))),
            "warnings": tuple(warnings),
            "witnesses": tuple(witnesses),
        }
    )
    log.info("evidence trail of %s: %d problem(s)", store.uri, len(report.broken))
    return report
