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
from expunge.orchestrator.evidence.state_binding import (
    binding_of,
    check_state,
    unregistered_training,
    unsealed_erasure,
)
from expunge.orchestrator.evidence.unsealed import buried_problem, sealing_gaps
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


def _tail(chain: ChainReport, anchored: set[int], where: str, when: str) -> list[BrokenLink]:
    """Receipts newer than the newest anchor: not yet fixed by it (each anchor fixes every receipt before it)."""
    newest = max(anchored, default=0)
    if not anchored or newest >= chain.receipts:
        return []
    return [
        BrokenLink(
            sequence=newest + 1,
            key=chain_key(newest + 1),
            problem=f"receipt(s) #{newest + 1}..#{chain.receipts} are newer than the newest {where} anchor "
            f"(#{newest}): {when}; until then they can be changed or removed unnoticed",
        )
    ]


def _gaps(chain: ChainReport, anchored: set[int]) -> list[BrokenLink]:
    """Receipts between Object Lock anchors that have none (each receipt gets one when it is sealed)."""
    missing = [s for s in range(min(anchored), chain.receipts + 1) if s not in anchored]
    if not missing:
        return []
    return [
        BrokenLink(
            sequence=missing[0],
            key=chain_key(missing[0]),
            problem=f"{len(missing)} receipt(s) since the first Object Lock anchor have none, the first #{missing[0]}: "
            "appended by a writer without evidence.anchor_uri, or its anchor write failed",
        )
    ]


def _registered(catalog: Catalog, chain: ChainReport) -> int | None:
    """The newest receipt that records an MLflow registration (None: none does)."""
    for sequence in range(chain.receipts, 0, -1):
        try:
            receipt = ErasureReceipt.model_validate_json(catalog.store.get(chain_key(sequence)))
        except Exception:  # missing or unreadable: the chain walk reports it
            continue
        if receipt.registry_version_after is not None or receipt.registered_at is not None:
            return sequence
    return None


def audit_trail(
    catalog: Catalog,
    latest: EnsembleManifest,
    view: AuditView | None,
    evidence: EvidenceConfig | None,
    registry_skipped: str | None = None,
) -> ChainReport:
    """Walk the receipt log and every anchor, the journal log and the published state; see the module docstring.

    ``view``: the MLflow registry of the store (None: no MLflow witness or anchor); ``registry_skipped``:
    why it is None although the store records one (a copy run with tracking off), a warning rather
    than a removed binding. Reads every
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
        mlflow = [
            Anchor(
                sequence=a.sequence,
                request_id=a.request_id,
                receipt_sha256=a.receipt_sha256,
                where=f"MLflow run {a.run_id}",
            )
            for a in view.chain_anchors()
        ]
        anchors += mlflow
        witnesses.append("MLflow anchors")
        warnings += _tail(chain, {a.sequence for a in mlflow}, "MLflow", "the next registration anchors them")
    if evidence is not None and evidence.anchor_uri:
        locked, problems = ObjectLockAnchors(evidence.anchor_uri, evidence.anchor_retention_days, store.config).read()
        anchors += locked
        broken += problems
        if locked:
            witnesses.append("S3 Object Lock anchors")
            warnings += _gaps(chain, {a.sequence for a in locked})
        elif chain.receipts:
            warnings.append(
                BrokenLink(
                    sequence=None,
                    key=evidence.anchor_uri,
                    problem="evidence.anchor_uri holds no anchor of this store's receipts: nothing was compared "
                    "with it (a bucket other than the one the writers use, anchors not written since it was set, "
                    "or deleted)",
                )
            )
    broken += compare_anchors(store, anchors)
    if view is None and registry_skipped and _registered(catalog, chain):
        warnings.append(
            BrokenLink(sequence=None, key="ensemble", problem=f"MLflow's witnesses and anchors: {registry_skipped}")
        )
    elif view is None and (registered := _registered(catalog, chain)):
        broken.append(
            BrokenLink(
                sequence=registered,
                key="ensemble",
                problem=f"receipt #{registered} records an MLflow registration, but the published version names no "
                "registry: the registry binding was removed from the store, so MLflow's witnesses and anchors were "
                "not checked (pass --tracking-uri)",
            )
        )
    reached, reached_sha = _journal_reached(catalog, chain)
    journal = walk_journal(store, reached, reached_sha)
    broken += [BrokenLink(sequence=None, key="journal/log", problem=p) for p in journal.broken]
    warnings += [BrokenLink(sequence=None, key="journal", problem=p) for p in journal.warnings]
    witnesses.append(f"journal log ({journal.entries} entries)")
    binding, sequence = binding_of(catalog, latest)
    forged = unregistered_training(latest, view.registered_ensemble_versions if view is not None else None)
    if binding is None and forged is not None:
        broken.append(BrokenLink(sequence=None, key="ensemble", problem=forged))
    if binding is None and (unsealed := unsealed_erasure(catalog, latest)) is not None:
        broken.append(BrokenLink(sequence=None, key="ensemble", problem=unsealed))
    buried, after_head = sealing_gaps(catalog, latest)
    broken += [BrokenLink(sequence=None, key="ensemble", problem=buried_problem(m)) for m in buried]
    for manifest in after_head:  # the published one's is reported above (binding_of found none)
        if manifest.version != latest.version and (unsealed := unsealed_erasure(catalog, manifest)) is not None:
            broken.append(BrokenLink(sequence=None, key="ensemble", problem=unsealed))
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
