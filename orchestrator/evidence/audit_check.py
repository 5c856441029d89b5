"""The membership-audit check of ``expunge verify --request``: the stored audit record, re-read and judged.

Also the post-hoc check ``expunge verify --audit`` runs for an erasure that was *not* audited
at erasure time (``holdout_check``): the erased rows are gone, so no attack can be scored any
more; what can still be run is to score held-out rows under the live ensemble and under the
affected shards re-derived from scratch, and require bit-identical predictions. It is labelled
as what it is (details ``kind: post_hoc_holdout``): not a membership audit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from expunge.orchestrator.catalog import Catalog, EnsembleManifest
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.evidence.check_result import result as _result
from expunge.orchestrator.evidence.membership import AuditRecord, read_audit, scorable_rows
from expunge.orchestrator.evidence.rederive import final_states, rederive_shards
from expunge.orchestrator.evidence.report import CheckResult
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.serving.servable import EnsemblePredictor
from expunge.shards.store import ObjectStore
from expunge.shards.training import TrainedState

__all__ = ["NOT_AUDITED", "POST_HOC", "audit_check", "holdout_check"]

#: Why an erasure without an audit cannot be audited now, and what can be done (verify's summary).
NOT_AUDITED = (
    "No membership audit ran at this erasure (no evidence.audit_holdout was configured and the caller passed "
    "none). The erasure deleted the person's rows, by design, so the audit, which scores those rows, can no "
    "longer be run. To audit future erasures set evidence.audit_holdout (or `expunge forget --audit-holdout "
    "PATH`); for this one, `expunge verify --audit --audit-holdout PATH` runs a post-hoc check on held-out rows, "
    "which is not a membership audit."
)
#: The ``details["kind"]`` of the post-hoc check's result (its row is still named ``membership_audit``).
POST_HOC = "post_hoc_holdout"


def audit_check(store: ObjectStore, receipt: ErasureReceipt) -> tuple[CheckResult, AuditRecord | None]:
    """The stored audit record checked against the receipt; ``skipped`` (saying why) when there is none.

    Returns the check and the record (None when there is none). Fails when the receipt names a
    record that is gone or differs, or the record shows after and from scratch disagreeing.
    """
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
            "The request found no data, so there was nothing to audit." if receipt.status != "erased" else NOT_AUDITED
        )
        if receipt.audit_error is not None:
            reason = (
                f"The membership audit configured for this erasure did not complete after the commit "
                f"({receipt.audit_error}); the erasure itself is committed, and the other checks cover it."
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
            {"kind": "audit", "audit_sha256": sha256},
        ),
        record,
    )


def holdout_check(
    catalog: Catalog,
    manifest: EnsembleManifest,
    affected_shards: Sequence[int],
    holdout: pa.Table,
    hasher: SubjectHasher,
) -> CheckResult:
    """Post-hoc: ``holdout`` rows scored under the live ensemble and under the re-derived one must agree bit for bit.

    ``manifest``: the published version to check; ``affected_shards``: the shards the erasure
    retrained (re-derived from scratch here, about one shard's training each, in this process);
    ``holdout``: canonical held-out rows (``evidence.holdout.holdout_rows``); ``hasher``: the
    store's key (the models look subjects up by digest). Returns a
    ``membership_audit`` result whose details say ``kind: post_hoc_holdout``; ``failed`` when a
    prediction differs or a shard could not be re-derived.

    Raises:
        DataValidationError: held-out rows that do not fit the model's task.
        ConfigError: no held-out row the model can score.
    """
    rows = scorable_rows(holdout, manifest, hasher)
    shards = sorted(s for s in affected_shards if s < len(manifest.shard_versions))
    live = final_states(catalog, manifest)
    rederived = rederive_shards(catalog, manifest, shards)
    scratch: list[TrainedState] = [
        (rederived[s].state or state) if s in rederived else state for s, state in enumerate(live)
    ]
    live_predictions = np.asarray(EnsemblePredictor(manifest, live).predict(rows), np.float64)
    scratch_predictions = np.asarray(EnsemblePredictor(manifest, scratch).predict(rows), np.float64)
    differing = int(np.sum(np.any((live_predictions != scratch_predictions).reshape(len(rows), -1), axis=1)))
    problems = [f"shard {s} could not be re-derived from scratch" for s in shards if rederived[s].state is None]
    if differing:
        problems.append(
            f"post-hoc check: {differing} of {len(rows)} held-out row(s) are predicted differently by the live model "
            "and by the model re-derived from scratch (the erasure was not exact)"
        )
    details = {
        "kind": POST_HOC,
        "holdout_rows": len(rows),
        "rows_predicted_differently": differing,
        "max_abs_difference": float(np.max(np.abs(live_predictions - scratch_predictions))) if len(rows) else 0.0,
        "rederived_shards": shards,
    }
    return _result(
        "membership_audit",
        problems,
        "Post-hoc check, not a membership audit: no audit ran at erasure time and the erased rows are gone, so no "
        f"attack can be scored now. Instead {len(rows)} held-out row(s) were scored under the live model and under "
        f"shard(s) {', '.join(map(str, shards))} re-derived from scratch: every prediction is bit-identical. This "
        "restates the exactness check on predictions; it says nothing about what an attacker could infer.",
        details,
    )
