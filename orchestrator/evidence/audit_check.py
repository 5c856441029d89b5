"""The membership-audit check of ``expunge verify --request``: the stored audit record, re-read and judged."""

from __future__ import annotations

from expunge.orchestrator.evidence.check_result import result as _result
from expunge.orchestrator.evidence.membership import AuditRecord, read_audit
from expunge.orchestrator.evidence.report import CheckResult
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.shards.store import ObjectStore

__all__ = ["audit_check"]


def audit_check(store: ObjectStore, receipt: ErasureReceipt) -> tuple[CheckResult, AuditRecord | None]:
    stored = read_audit(store, receipt.request_id)
    if stored is None and receipt.audit_sha256 is not None:
        return (
            CheckResult(
                name="membership_audit",
                status="failed",
                summary="The receipt names an audit record that is no longer in the store (deleted).",
            ),
            None,
        )
    if stored is None:
        reason = (
            "The request found no data, so there was nothing to audit."
            if receipt.status != "erased"
            else "This erasure ran without a membership audit (pass audit=MembershipAudit(held_out_rows) to "
            "Coordinator.forget, as `expunge demo` does); the rows are gone, so it cannot be run now."
        )
        return CheckResult(name="membership_audit", status="skipped", summary=reason), None
    record, sha256 = stored
    problems = []
    if receipt.audit_sha256 != sha256:
        problems.append("the stored audit record is not the one the receipt names (edited or replaced)")
    if not record.after_equals_from_scratch:
        problems.append("the model after the erasure and the one retrained from scratch score the rows differently")
    problems += [
        f"at erasure time shard {r.shard} differed from its from-scratch retraining: {r.first_difference}"
        for r in record.rederived
        if not r.exact
    ]
    return (
        _result(
            "membership_audit",
            problems,
            f"Before the erasure the loss attack reached AUC {record.before.loss.auc:.2f} (calibrated "
            f"{record.before.calibrated.auc:.2f}); after it, AUC {record.after.loss.auc:.2f} (calibrated "
            f"{record.after.calibrated.auc:.2f}), the same as a model retrained from scratch, score for score.",
            {"audit_sha256": sha256},
        ),
        record,
    )
