"""Membership-inference audit of an erasure: could an attacker still tell that the erased rows were trained on?

For the erased subjects' rows (members) against held-out rows nobody trained on (non-members),
two attacks are scored under three models: the ensemble **before** the erasure, **after** it,
and **from scratch** (the affected shards re-derived on the remaining rows; the other shards
as published). The attacks:

- **loss**: the per-row loss (squared error of the predicted rating; cross-entropy of the
  true class); a lower loss says "member" (Yeom et al., CSF 2018).
- **calibrated**: a reference-model likelihood ratio in the style of LiRA (Carlini et al.,
  "Membership Inference Attacks From First Principles", IEEE S&P 2022), offline variant with
  one reference model and a global variance: the from-scratch model never saw the erased
  rows, so it is an OUT model for every row, and the score is the z-score
  ``(phi_target(x) - phi_reference(x)) / sigma``, with ``phi`` the negative squared error
  (ratings) or the logit of the true class's probability (classification) and ``sigma`` the
  spread of ``phi_reference`` over the non-member rows. The likelihood-ratio test is
  monotone in it, so AUC and TPR are the test's.

Each gives the AUC (Mann-Whitney, ties counted half) and the TPR at 1% FPR (the largest share
of members flagged at a threshold that flags at most 1% of non-members). After an exact
erasure "after" and "from scratch" give bit-identical scores, hence identical statistics.

``MembershipAudit`` is the hook ``Coordinator.forget(..., audit=...)`` calls: before any
shard is retrained (``before_retrain``: reads the rows and scores them under the old
constituents, the only moment both exist) and after the commit (``after_commit``: scores
under the new and the re-derived constituents, stores the statistics). Only statistics and
digests are stored, in ``receipts/audits/<request id>.json``; the rows, the per-row scores and
the old model are dropped.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from expunge.orchestrator.catalog import Catalog, EnsembleManifest
from expunge.orchestrator.config import EvidenceConfig, ItemStatsConfig, MFConfig
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.evidence.holdout import holdout_rows
from expunge.orchestrator.evidence.rederive import ShardExactness, final_states, rederive_shards
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.serving.servable import EnsemblePredictor
from expunge.shards.models import task_of
from expunge.shards.rows import ITEM_ID, LABEL, RATING, SUBJECT_DIGEST, SUBJECT_ID, validate_rows
from expunge.shards.store import ObjectStore
from expunge.shards.training import TrainedState

__all__ = [
    "AUDIT_PREFIX",
    "AttackStats",
    "AuditRecord",
    "ErasureAudit",
    "MembershipAudit",
    "ModelAudit",
    "attack_statistics",
    "auc",
    "audit_key",
    "configured_audit",
    "read_audit",
    "scorable_rows",
    "tpr_at_fpr",
]

log = logging.getLogger(__name__)

#: Where audit records live: ``receipts/audits/<request id>.json`` (digests and numbers only).
AUDIT_PREFIX = "receipts/audits"
_CLIP = 1e-12


def audit_key(request_id: str) -> str:
    return f"{AUDIT_PREFIX}/{request_id}.json"


# ----- the statistics (pure) -----------------------------------------------------------------------
def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """Area under the ROC curve of "higher score = member": P(member score > non-member score), ties half.

    ``members`` and ``nonmembers`` are 1-D float arrays of attack scores, each non-empty.

    Raises:
        ValueError: either array is empty.
    """
    members, nonmembers = np.asarray(members, np.float64), np.asarray(nonmembers, np.float64)
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError("auc needs at least one member and one non-member score")
    values = np.concatenate([members, nonmembers])
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0  # 1-based mean rank of each run of ties
    member_ranks = average_rank[inverse[: members.size]].sum()
    u = member_ranks - members.size * (members.size + 1) / 2.0
    return float(u / (members.size * nonmembers.size))


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float = 0.01) -> float:
    """The largest share of members scored >= t over thresholds t that flag at most ``fpr`` of non-members.

    With fewer than ``1 / fpr`` non-members that means no false positive at all. 0.0 when no
    threshold qualifies (e.g. every score tied).

    Raises:
        ValueError: either array is empty, or ``fpr`` is outside [0, 1].
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be within [0, 1], got {fpr}")
    members, nonmembers = np.asarray(members, np.float64), np.asarray(nonmembers, np.float64)
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError("tpr_at_fpr needs at least one member and one non-member score")
    thresholds = np.unique(np.concatenate([members, nonmembers]))
    flagged_members = members.size - np.searchsorted(np.sort(members), thresholds, side="left")
    flagged_nonmembers = nonmembers.size - np.searchsorted(np.sort(nonmembers), thresholds, side="left")
    allowed = flagged_nonmembers / nonmembers.size <= fpr + 1e-12
    return float((flagged_members[allowed] / members.size).max()) if allowed.any() else 0.0


class AttackStats(BaseModel):
    """One attack under one model: how well its scores separate members from non-members."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    auc: float
    tpr_at_fpr: float
    #: Mean attack score of member and of non-member rows (units of the attack's score).
    member_mean: float
    nonmember_mean: float


def attack_statistics(members: np.ndarray, nonmembers: np.ndarray, fpr: float = 0.01) -> AttackStats:
    """AUC, TPR at ``fpr`` and mean scores of one attack (see ``auc`` and ``tpr_at_fpr``)."""
    return AttackStats(
        auc=auc(members, nonmembers),
        tpr_at_fpr=tpr_at_fpr(members, nonmembers, fpr),
        member_mean=float(np.mean(members)),
        nonmember_mean=float(np.mean(nonmembers)),
    )


class ModelAudit(BaseModel):
    """Both attacks under one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    loss: AttackStats
    calibrated: AttackStats


class AuditRecord(BaseModel):
    """The stored result of one erasure's audit: digests and numbers, never rows, scores per row or weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format_version: int = 1
    request_id: str
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    subject_digests: tuple[str, ...]
    member_rows: int
    nonmember_rows: int
    fpr: float
    ensemble_version_before: int
    ensemble_version_after: int
    before: ModelAudit
    after: ModelAudit
    from_scratch: ModelAudit
    #: Every per-row score (both attacks, members and non-members) bit-identical after and from scratch.
    after_equals_from_scratch: bool
    #: The affected shards re-derived from scratch at erasure time, compared with the new constituents.
    rederived: tuple[ShardExactness, ...]
    seconds: float
    method: str = (
        "loss: negative per-row loss; calibrated: LiRA-style offline likelihood ratio with the from-scratch "
        "model as the single reference (OUT) model and a global variance (Carlini et al., IEEE S&P 2022)"
    )


def read_audit(store: ObjectStore, request_id: str) -> tuple[AuditRecord, str] | None:
    """The stored audit record of a request and the sha256 of its bytes, or None when there is none."""
    key = audit_key(request_id)
    if not store.exists(key):
        return None
    data = store.get(key)
    return AuditRecord.model_validate_json(data), hashlib.sha256(data).hexdigest()


# ----- the hook --------------------------------------------------------------------------------------
class ErasureAudit(Protocol):
    """What ``Coordinator.forget`` calls when given an ``audit``; both calls happen inside the erasure."""

    def before_retrain(
        self, catalog: Catalog, manifest: EnsembleManifest, digests: Sequence[str], hasher: SubjectHasher
    ) -> None:
        """Called with the published version and the found subjects' digests before any shard is retrained."""
        ...

    def after_commit(self, catalog: Catalog, manifest: EnsembleManifest, receipt: ErasureReceipt) -> str:
        """Called after the new version is published and recorded; stores the record, returns its sha256."""
        ...


@dataclass
class _Before:
    """What ``before_retrain`` keeps in memory until ``after_commit``: rows and per-row scores, never stored."""

    manifest: EnsembleManifest
    digests: tuple[str, ...]
    members: pa.Table
    nonmembers: pa.Table
    phi: tuple[np.ndarray, np.ndarray]  # before: (members, non-members)
    loss_score: tuple[np.ndarray, np.ndarray]


def scorable_rows(rows: pa.Table, manifest: EnsembleManifest, hasher: SubjectHasher) -> pa.Table:
    """Validated held-out rows the model can score, with their ``subject_digest`` under ``hasher``'s key.

    Items outside the model's catalogue are left out, not refused: a held-out split can hold an
    item no training row had (the catalogue size was taken from the training rows); such a row
    says nothing about membership.

    Raises:
        DataValidationError: rows that do not fit the model's task.
        ConfigError: no row left to score.
    """
    model = manifest.model
    catalogue = model.num_items if isinstance(model, MFConfig | ItemStatsConfig) else None
    rows = validate_rows(rows, "audit non-member rows", task_of(model), model=None if catalogue else model)
    if catalogue is not None:
        inside = pc.less(rows.column(ITEM_ID), catalogue)
        left_out = len(rows) - int(pc.sum(inside).as_py() or 0)
        if left_out:
            log.info("audit: %d non-member row(s) rate items outside the catalogue; left out", left_out)
        rows = rows.filter(inside)
    if len(rows) == 0:
        raise ConfigError("no audit non-member row can be scored by the model (every item is outside its catalogue)")
    if SUBJECT_DIGEST not in rows.column_names:
        digests = hasher.digest_many(rows.column(SUBJECT_ID).to_pylist())
        rows = rows.append_column(SUBJECT_DIGEST, pa.array(digests, pa.string()))
    return rows


def _targets(rows: pa.Table, task: str) -> np.ndarray:
    return np.asarray(rows.column(RATING if task == "rating" else LABEL).to_numpy(), dtype=np.float64)


def _scores(predictions: np.ndarray, rows: pa.Table, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(phi, loss score) per row: phi for the calibrated attack, negative loss for the loss attack."""
    truth = _targets(rows, task)
    if task == "rating":
        phi = -((np.asarray(predictions, np.float64) - truth) ** 2)
        return phi, phi
    probabilities = np.asarray(predictions, np.float64)
    p = np.clip(probabilities[np.arange(len(truth)), truth.astype(np.int64)], _CLIP, 1.0 - _CLIP)
    return np.log(p) - np.log1p(-p), np.log(p)


class MembershipAudit:
    """The membership-inference audit ``Coordinator.forget`` runs when passed ``audit=MembershipAudit(rows)``.

    ``nonmembers``: held-out canonical rows (``record_id``, ``subject_id``, and the model's
    inputs and target) that no version of the store was trained on, e.g. the test split; the
    audit's baseline. Rows of subjects never trained on give a subject-level baseline; held-out
    rows of known subjects a row-level one. ``fpr``: the false-positive rate of the TPR figure.

    Costs: the old and new ensembles are loaded in the calling process, and the affected
    shards are re-derived from scratch there (about one shard's training each), after the
    commit, so the erasure's own timings are unchanged.

    Raises:
        ConfigError: no non-member rows, or ``fpr`` outside (0, 1).
    """

    def __init__(self, nonmembers: pa.Table, fpr: float = 0.01) -> None:
        if len(nonmembers) == 0:
            raise ConfigError("a membership audit needs held-out non-member rows (e.g. the test split); got none")
        if not 0.0 < fpr < 1.0:
            raise ConfigError(f"audit fpr must be within (0, 1), got {fpr}")
        self.nonmembers = nonmembers
        self.fpr = fpr
        self._before: _Before | None = None

    def before_retrain(
        self, catalog: Catalog, manifest: EnsembleManifest, digests: Sequence[str], hasher: SubjectHasher
    ) -> None:
        """Read the subjects' rows from the published slices and score them under the published constituents."""
        task = task_of(manifest.model)
        nonmembers = scorable_rows(self.nonmembers, manifest, hasher)
        members = self._member_rows(catalog, manifest, digests)
        predictor = EnsemblePredictor(manifest, final_states(catalog, manifest))
        phi_m, loss_m = _scores(predictor.predict(members), members, task)
        phi_n, loss_n = _scores(predictor.predict(nonmembers), nonmembers, task)
        self._before = _Before(manifest, tuple(digests), members, nonmembers, (phi_m, phi_n), (loss_m, loss_n))

    @staticmethod
    def _member_rows(catalog: Catalog, manifest: EnsembleManifest, digests: Sequence[str]) -> pa.Table:
        """Every row of the subjects, read from the published slices that hold them."""
        cells = catalog.read_placement(manifest.placement_key).cells()
        wanted = pa.array(sorted(set(digests)), pa.string())
        tables = []
        for cell in sorted({c for d in digests for c in cells.get(d, [])}):
            entry = catalog.shard_manifest(cell.shard, manifest.shard_versions[cell.shard]).slices[cell.slice]
            table = pq.read_table(io.BytesIO(catalog.store.get(entry.key)))
            tables.append(table.filter(pc.is_in(table.column(SUBJECT_DIGEST), value_set=wanted)))
        members = pa.concat_tables(tables) if tables else pa.table({})
        if len(members) == 0:
            raise ConfigError("the audit found no rows of the erased subjects in the published slices")
        return members

    def after_commit(self, catalog: Catalog, manifest: EnsembleManifest, receipt: ErasureReceipt) -> str:
        """Score under the new and the re-derived constituents, store the record, forget rows and scores.

        Returns the sha256 of the stored record (the receipt carries it, so the receipt log
        covers the record too).

        Raises:
            ConfigError: ``before_retrain`` was not called first.
        """
        before, self._before = self._before, None  # rows and per-row scores go, whatever happens next
        if before is None:
            raise ConfigError("MembershipAudit.after_commit called without before_retrain: pass it to forget()")
        began = time.perf_counter()
        task = task_of(manifest.model)
        after_states = final_states(catalog, manifest)
        rederived = rederive_shards(catalog, manifest, receipt.affected_shards)
        scratch_states: list[TrainedState] = [
            (rederived[s].state or state) if s in rederived else state for s, state in enumerate(after_states)
        ]
        scores: dict[str, tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {}
        for name, states in (("after", after_states), ("from_scratch", scratch_states)):
            predictor = EnsemblePredictor(manifest, states)
            phi_m, loss_m = _scores(predictor.predict(before.members), before.members, task)
            phi_n, loss_n = _scores(predictor.predict(before.nonmembers), before.nonmembers, task)
            scores[name] = ((phi_m, phi_n), (loss_m, loss_n))
        scores["before"] = (before.phi, before.loss_score)
        reference_phi = scores["from_scratch"][0]
        spread = float(np.std(reference_phi[1])) or 1.0

        def audit_of(name: str) -> ModelAudit:
            (phi_m, phi_n), (loss_m, loss_n) = scores[name]
            return ModelAudit(
                loss=attack_statistics(loss_m, loss_n, self.fpr),
                calibrated=attack_statistics(
                    (phi_m - reference_phi[0]) / spread, (phi_n - reference_phi[1]) / spread, self.fpr
                ),
            )

        # A shard that could not be re-derived has no from-scratch model: nothing was compared.
        identical = all(rederived[s].state is not None for s in rederived) and all(
            np.array_equal(a, b)
            for a, b in zip(
                (*scores["after"][0], *scores["after"][1]),
                (*scores["from_scratch"][0], *scores["from_scratch"][1]),
                strict=True,
            )
        )
        record = AuditRecord(
            request_id=receipt.request_id,
            subject_digests=before.digests,
            member_rows=len(before.members),
            nonmember_rows=len(before.nonmembers),
            fpr=self.fpr,
            ensemble_version_before=before.manifest.version,
            ensemble_version_after=manifest.version,
            before=audit_of("before"),
            after=audit_of("after"),
            from_scratch=audit_of("from_scratch"),
            after_equals_from_scratch=identical,
            rederived=tuple(r.result for _, r in sorted(rederived.items())),
            seconds=time.perf_counter() - began,
        )
        data = record.model_dump_json(indent=1).encode()
        catalog.store.put(audit_key(receipt.request_id), data)
        log.info(
            "request %s audited: loss AUC before %.3f, after %.3f, from scratch %.3f",
            receipt.request_id,
            record.before.loss.auc,
            record.after.loss.auc,
            record.from_scratch.loss.auc,
        )
        return hashlib.sha256(data).hexdigest()


def configured_audit(evidence: EvidenceConfig) -> ErasureAudit | None:
    """A fresh ``MembershipAudit`` for one request over ``evidence.audit_holdout``; None when that is unset.

    The held-out rows are read once and cached (``evidence.holdout.holdout_rows``); each call
    returns a new audit, since an audit holds one request's rows between its two calls.

    Raises:
        ConfigError: naming ``evidence.audit_holdout``: the file or folder is missing, unreadable,
            empty or holds invalid rows. Raised before anything of the erasure is written.
    """
    if evidence.audit_holdout is None:
        return None
    return MembershipAudit(holdout_rows(evidence.audit_holdout), evidence.audit_fpr)
