"""Verification of one erasure (re-derivation, storage, registry, membership audit, receipt log) and of the log.

``verify_erasure`` re-checks, from what the store and the registry hold now, the evidence an
erasure left; every check is ``passed``, ``failed`` or ``skipped`` (with the reason), and the
report reads as Markdown for a data-protection officer. What each check proves and what it
cannot prove: docs/verification.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

from expunge.orchestrator.catalog import Catalog, EnsembleManifest, RegistryBinding
from expunge.orchestrator.config import EvidenceConfig, StorageConfig
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.evidence.audit_check import audit_check
from expunge.orchestrator.evidence.check_result import result as _result
from expunge.orchestrator.evidence.log_audit import audit_trail
from expunge.orchestrator.evidence.receipt_chain import ChainReport, chained_receipts
from expunge.orchestrator.evidence.rederive import rederive_shards
from expunge.orchestrator.evidence.references import erased_by, resolve_request
from expunge.orchestrator.evidence.report import CheckResult, VerifyReport
from expunge.orchestrator.evidence.state_binding import (
    binding_of,
    check_state,
    unregistered_training,
    unsealed_erasure,
)
from expunge.orchestrator.evidence.storage_check import storage_check
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.registry.checks import AuditView
from expunge.orchestrator.session import published
from expunge.shards.models import SufficientStatisticsModel, model_for
from expunge.shards.store import ObjectStore

__all__ = ["verify_erasure", "verify_log"]

log = logging.getLogger(__name__)


# ----- the checks ------------------------------------------------------------------------------------
def _exactness(catalog: Catalog, receipt: ErasureReceipt, version: int) -> CheckResult:
    manifest = catalog.read(version)
    shards = [s for s in receipt.affected_shards if s < len(manifest.shard_versions)]
    if receipt.status != "erased" or not shards:
        return CheckResult(
            name="exactness", status="skipped", summary="The request found no data, so no model was retrained."
        )
    results = [r.result for r in rederive_shards(catalog, manifest, shards).values()]
    details = {"shards": [r.model_dump() for r in results]}
    problems = [
        f"shard {r.shard} differs from a from-scratch retraining: {r.first_difference}" for r in results if not r.exact
    ]
    checkpoints = sum(r.checkpoints_compared for r in results)
    tensors = sum(r.tensors_compared for r in results)
    names = ", ".join(str(r.shard) for r in results)
    what = (
        "sufficient statistics"
        if isinstance(model_for(manifest.model), SufficientStatisticsModel)
        else ("weights and optimizer state")
    )
    return _result(
        "exactness",
        problems,
        f"Shard(s) {names} retrained from scratch on the remaining data (persisted placement, same settings) "
        f"and compared with the live model: {checkpoints} checkpoint(s), {tensors} tensors ({what}), all "
        "bit-for-bit identical.",
        details,
    )


def state_check(catalog: Catalog, latest: EnsembleManifest, view: AuditView | None) -> CheckResult:
    """The published version's stored files against the hashes its commit's receipt recorded.

    A version made by training has no receipt; with a registry, MLflow must hold a model version
    of it (a version written into the store by hand, claiming to be a training, has none).
    """
    binding, sequence = binding_of(catalog, latest)
    forged = unregistered_training(latest, view.registered_ensemble_versions if view is not None else None)
    if binding is None and forged is not None:
        return CheckResult(name="state", status="failed", summary=forged[0].upper() + forged[1:] + ".")
    if binding is None and (unsealed := unsealed_erasure(catalog, latest)) is not None:
        return CheckResult(name="state", status="failed", summary=unsealed[0].upper() + unsealed[1:] + ".")
    if binding is None:
        return CheckResult(
            name="state",
            status="skipped",
            summary=f"No chained receipt binds the published version {latest.version} (it was made by "
            f"{'an ingest' if latest.kind == 'ingest' else 'training'} after the newest erasure, or its receipts "
            "predate state binding); the next erasure's receipt will.",
        )
    problems = check_state(catalog, latest, binding)
    shards = len(latest.shard_versions)
    return _result(
        "state",
        problems,
        f"Every file of the published version {latest.version} ({len(binding.files)} manifests, slices and "
        f"checkpoints in {shards} shard(s), and the placement index) holds the content that receipt #{sequence} "
        "recorded at its commit: none was moved, copied, swapped or edited since.",
        {"receipt": sequence, "files": len(binding.files), "problems": problems},
    )


def _registry(view: AuditView | None, receipt: ErasureReceipt, why_skipped: str, skipped: bool = False) -> CheckResult:
    if view is None and skipped:  # on purpose (a copy run with tracking off): the why says so
        return CheckResult(name="registry", status="skipped", summary=why_skipped)
    if view is None and receipt.registry_version_after is not None:
        return CheckResult(
            name="registry",
            status="failed",
            summary=f"The receipt records MLflow version {receipt.registry_version_after}, but the store now names no "
            "registry (its binding was removed): the registry cannot be checked; pass --tracking-uri.",
        )
    if view is None:
        return CheckResult(name="registry", status="skipped", summary=why_skipped)
    if receipt.status != "erased" or receipt.model_version_after is None:
        return CheckResult(
            name="registry",
            status="skipped",
            summary="The request found no data, so no model version was made from it.",
        )
    found = view.check_erasure(receipt.model_version_after)
    held = len(found.versions)
    return _result(
        "registry",
        list(found.problems),
        f"{held} earlier model version(s) of `{found.model_name}` held the person's data: none can be loaded "
        f"and no stored file of them remains. The alias `{found.alias}` serves version {found.served_version}, "
        "made after the erasure.",
        found.model_dump(),
    )


def _receipt_log(chain: ChainReport, store: ObjectStore, request_id: str, witnessed: bool) -> CheckResult:
    problems = []
    if not chained_receipts(store, request_id):
        problems.append(f"the receipt log holds no receipt of request {request_id}")
    if chain.broken:
        first = chain.first_broken
        assert first is not None
        where = f"receipt #{first.sequence}" if first.sequence is not None else first.key
        problems.append(f"the evidence trail is broken at {where}: {first.problem}")
    witness = ", every request MLflow records is in it," if witnessed else ""
    return _result(
        "receipt_log",
        problems,
        f"{chain.receipts} receipt(s), each sealed with the hash of the one before: none was deleted, edited or "
        f"reordered{witness} and each matches its anchors outside the store ({', '.join(chain.witnesses) or 'none'}).",
        chain.model_dump(),
    )


# ----- entry points ------------------------------------------------------------------------------------
def _registry_view(binding: RegistryBinding | None, storage: StorageConfig | str) -> tuple[AuditView | None, str]:
    if binding is None:
        return (
            None,
            "The store records no MLflow registry (trained with tracking off); pass --tracking-uri to check one.",
        )
    return AuditView(binding, storage), ""


def verify_erasure(
    storage: StorageConfig | str,
    request_id: str,
    hasher: SubjectHasher,
    subject_id: str | None = None,
    registry: RegistryBinding | None = None,
    log_to_mlflow: bool = True,
    registry_skipped: str | None = None,
    evidence: EvidenceConfig | None = None,
) -> VerifyReport:
    """Check one erasure request end to end and (by default) attach the report to its MLflow runs.

    ``request_id``: the request id, or the idempotency key or ticket it was submitted with
    (``evidence.references.resolve_request``). ``evidence``: where the receipt log is anchored
    (None: MLflow only). ``hasher``: the store's digest key. ``subject_id``: the raw id of one subject of the request
    (optional: without it the storage scan looks for digests only). ``registry``: the MLflow
    registry to check; None checks the one the store records, and none is skipped; ``registry_skipped``:
    why MLflow is deliberately not checked (a copy of a store run with tracking off), said in the report. Re-derives
    the request's affected shards in this process (about one shard's training each) and reads
    every stored object version once per subject.

    Raises:
        ConfigError: no published store, a key other than the store's, an unusable request id,
            no receipt of the request, or a subject the request does not name.
        StorageCorruptError: a manifest or the receipt is unreadable.
        TrackingUnreachable: the registry does not answer.
    """
    catalog, latest = published(storage, hasher)
    store = catalog.store
    request_id = resolve_request(catalog, hasher, request_id)
    text = catalog.read_request_receipt(request_id)
    chained = chained_receipts(store, request_id)
    asked = request_id
    own: ErasureReceipt | None = None  # a coalesced request's own receipt (its subjects only)
    status = None
    if text is None and not chained:
        # A request the service coalesced with others: its erasure is the shared commit's, which
        # is what gets re-derived and checked; the report and the scan are about its own subjects.
        from expunge.orchestrator.service.journal import Journal

        status = Journal(store).status(request_id)
        if status is not None and status.receipt is not None and status.receipt.batch_id:
            log.info("request %s was coalesced into %s: verifying that commit", request_id, status.receipt.batch_id)
            request_id = status.receipt.batch_id
            own = status.receipt.model_copy(update={"request_id": request_id})
            text = catalog.read_request_receipt(request_id)
            chained = chained_receipts(store, request_id)
    if text is None and not chained and status is not None:  # the service has it: failed, or not sealed yet
        raise ConfigError(
            f"request {request_id} failed before its commit: nothing was erased by it, and there is nothing to verify"
            if status.stage == "failed"
            else f"request {request_id} is known to the service (stage {status.stage}) but has no sealed receipt yet: "
            "the service seals it after its commit, or resumes it when it starts again; verify it then"
        )
    if text is None and not chained:
        raise ConfigError(
            f"no receipt of request {request_id!r} in {store.uri}: check the request id (`expunge forget` prints it "
            "in the receipt, the demo in its table) and --storage"
        )
    receipt = ErasureReceipt.model_validate_json(text) if text is not None else chained[-1][1]
    shown = own or receipt
    digest = hasher.digest(subject_id) if subject_id is not None else None
    if digest is not None and digest not in shown.subject_digests:
        raise ConfigError(
            f"--subject does not name a subject of request {request_id} (its digest is not in the receipt); check "
            "the id, or leave --subject out to check by digest"
        )
    view, why = (None, registry_skipped) if registry_skipped else _registry_view(registry or latest.registry, storage)
    exactness = _exactness(catalog, receipt, latest.version)
    state = state_check(catalog, latest, view)
    stored = storage_check(store, catalog, shown, subject_id, digest)
    registry_check = _registry(view, receipt, why, skipped=bool(registry_skipped))
    membership, record = audit_check(store, receipt)
    trail = audit_trail(catalog, latest, view, evidence, registry_skipped)
    log_check = _receipt_log(trail, store, request_id, view is not None)
    checks = (exactness, state, stored, registry_check, membership, log_check)
    report = VerifyReport(
        request_id=asked,
        batch_id=request_id if own is not None else None,
        storage=store.uri if "://" in store.uri else str(Path(store.uri).resolve()),  # filed: never relative
        status="failed" if any(c.status == "failed" for c in checks) else "passed",
        receipt_status=shown.status,
        subject_digests=shown.subject_digests,
        rows_removed=shown.rows_removed,
        affected_shards=tuple(receipt.affected_shards),
        ensemble_version=latest.version,
        raw_id_checked=subject_id is not None,
        checks=checks,
        audit=record,
        erased_earlier_by=tuple(
            dict.fromkeys(erased_by(catalog, shown.already_erased_digests, before=shown.created_at).values())
        ),
    )
    if view is not None and log_to_mlflow:
        runs = view.log_verification(request_id, report.model_dump(mode="json"), report.to_markdown(), report.passed)
        report = report.model_copy(update={"mlflow_runs": tuple(runs)})
    log.info("request %s verified: %s", request_id, report.status)
    return report


def verify_log(
    storage: StorageConfig | str, registry: RegistryBinding | None = None, evidence: EvidenceConfig | None = None
) -> ChainReport:
    """Walk the store's evidence trail (``evidence.log_audit.audit_trail``): receipt log, anchors, journal, state.

    With a registry (default: the one the store records), MLflow witnesses the log and holds
    anchors; ``evidence.anchor_uri`` adds the Object Lock anchors.

    Raises:
        ConfigError: the store holds no published version (nothing to verify).
    """
    catalog, latest = published(storage)
    view, _ = _registry_view(registry or latest.registry, storage)
    return audit_trail(catalog, latest, view, evidence)
