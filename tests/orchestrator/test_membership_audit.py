"""The membership-inference audit: its statistics, a model that leaks before erasure, and an inexact erasure caught."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import expunge.orchestrator.evidence.membership as audit_module
from expunge.orchestrator.config import (
    JobConfig,
    MFConfig,
    MLPConfig,
    ShardingConfig,
    SyntheticRatingsConfig,
    TrainingConfig,
)
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.evidence.membership import MembershipAudit, attack_statistics, auc, read_audit, tpr_at_fpr
from expunge.orchestrator.evidence.verify import verify_erasure
from expunge.pipelines.datasets import split_rows, synthetic_ratings, synthetic_tabular
from expunge.shards.rows import ITEM_ID, RECORD_ID, SUBJECT_ID


# ----- the statistics -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("members", "nonmembers", "expected_auc", "expected_tpr"),
    [
        ([3.0, 4.0], [1.0, 2.0], 1.0, 1.0),  # perfect separation
        ([1.0, 2.0], [3.0, 4.0], 0.0, 0.0),  # reversed
        ([1.0, 1.0], [1.0, 1.0], 0.5, 0.0),  # all tied: a coin toss, and no threshold flags members alone
        ([2.0, 0.0], [1.0, 1.0], 0.5, 0.5),  # one member above every non-member
    ],
)
def test_auc_and_tpr_at_low_fpr(members, nonmembers, expected_auc, expected_tpr):
    members, nonmembers = np.array(members), np.array(nonmembers)
    assert auc(members, nonmembers) == pytest.approx(expected_auc)
    assert tpr_at_fpr(members, nonmembers, 0.01) == pytest.approx(expected_tpr)


def test_tpr_at_fpr_allows_the_stated_share_of_false_positives():
    nonmembers = np.arange(100, dtype=np.float64)  # 0..99
    members = np.array([98.5, 50.0])
    assert tpr_at_fpr(members, nonmembers, 0.01) == 0.5  # threshold 98.5 flags one non-member (99): 1% ...
    assert tpr_at_fpr(members, nonmembers, 0.005) == 0.0  # ... which 0.5% does not allow
    assert tpr_at_fpr(members, nonmembers, 0.5) == 1.0  # threshold 50 flags 50 of 100 non-members
    assert attack_statistics(members, nonmembers).member_mean == pytest.approx(74.25)


def test_statistics_need_rows_on_both_sides():
    with pytest.raises(ValueError):
        auc(np.array([]), np.array([1.0]))
    with pytest.raises(ConfigError, match="non-member"):
        MembershipAudit(pa.table({"x": pa.array([], pa.int64())}))


# ----- on real erasures ---------------------------------------------------------------------------------
def _overfitted(tmp_path, hasher):
    """Large user factors, no penalty, many epochs: the model memorises each user's training ratings."""
    rows, held_out = split_rows(
        synthetic_ratings(SyntheticRatingsConfig(users=24, items=40, ratings_per_user=24, seed=5)), 0.25, 0
    )
    config = JobConfig(
        sharding=ShardingConfig(shards=2, slices=2),
        training=TrainingConfig(
            model=MFConfig(embedding_dim=16, l2=0.0, init_std=0.3),
            epochs=120,
            batch_size=64,
            learning_rate=0.05,
            cpus_per_shard=0.5,
        ),
    )
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    coordinator.train(rows, config)
    return coordinator, rows, held_out


def test_an_overfitted_model_leaks_before_erasure_and_not_after(tmp_path, hasher):
    coordinator, rows, held_out = _overfitted(tmp_path, hasher)
    subjects = sorted(set(rows.column(SUBJECT_ID).to_pylist()))[:3]  # ~54 member rows
    # A held-out row of an item outside the model's catalogue says nothing about membership: left out.
    stranger = held_out.slice(0, 1)
    stranger = stranger.set_column(stranger.column_names.index(ITEM_ID), ITEM_ID, pa.array([10_000], pa.int64()))
    stranger = stranger.set_column(stranger.column_names.index(RECORD_ID), RECORD_ID, pa.array(["not-a-member"]))
    audit = MembershipAudit(pa.concat_tables([held_out, stranger.cast(held_out.schema)]))
    receipt = coordinator.forget(subjects, request_id="overfit-1", audit=audit)
    stored = read_audit(coordinator.store, "overfit-1")
    assert stored is not None
    record, sha256 = stored
    assert receipt.audit_sha256 == sha256  # the receipt log covers the record
    assert record.member_rows == receipt.rows_removed
    assert record.nonmember_rows == len(held_out)
    assert record.before.loss.auc > 0.9  # members are told apart from non-members ...
    assert record.before.loss.tpr_at_fpr > 0.5
    assert record.before.calibrated.auc > 0.8
    assert record.after == record.from_scratch  # ... and after an exact erasure, as from scratch
    assert record.after_equals_from_scratch
    assert record.after.calibrated.auc == 0.5  # the reference is the model itself: every score ties
    assert all(r.exact for r in record.rederived)
    text = coordinator.store.get(f"receipts/audits/{receipt.request_id}.json").decode()
    assert not any(s in text for s in subjects)  # digests and numbers only


def test_the_audit_scores_classifiers_too(tmp_path, hasher):
    rows, held_out = split_rows(synthetic_tabular(subjects=30, rows_per_subject=4, features=6, classes=3, seed=2), 0.2)
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    coordinator.train(
        rows,
        JobConfig(
            sharding=ShardingConfig(shards=2, slices=2),
            training=TrainingConfig(
                model=MLPConfig(num_features=6, num_classes=3, hidden=(8,)), epochs=3, batch_size=16, cpus_per_shard=0.5
            ),
        ),
    )
    subject = sorted(set(rows.column(SUBJECT_ID).to_pylist()))[4]
    coordinator.forget([subject], request_id="mlp-1", audit=MembershipAudit(held_out))
    stored = read_audit(coordinator.store, "mlp-1")
    assert stored is not None
    assert stored[0].after_equals_from_scratch
    assert 0.0 <= stored[0].before.loss.auc <= 1.0


def test_an_inexact_erasure_fails_the_audit_check(tmp_path, hasher, monkeypatch):
    """If the retrained model and a from-scratch one differed, the audit and verify say so."""
    rows, held_out = split_rows(synthetic_ratings(SyntheticRatingsConfig(users=20, items=20, ratings_per_user=6)), 0.2)
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    coordinator.train(rows, JobConfig(sharding=ShardingConfig(shards=2, slices=2)))
    real = audit_module.rederive_shards

    def perturbed(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = real(*args, **kwargs)
        for rederived in result.values():
            assert rederived.state is not None
            rederived.state.module.item_bias.data[:] += 0.01  # type: ignore[operator]
        return result

    monkeypatch.setattr(audit_module, "rederive_shards", perturbed)
    subject = sorted(set(rows.column(SUBJECT_ID).to_pylist()))[2]
    coordinator.forget([subject], request_id="inexact-1", audit=MembershipAudit(held_out))
    monkeypatch.undo()
    report = verify_erasure(str(tmp_path / "store"), "inexact-1", hasher, subject, log_to_mlflow=False)
    check = report.check("membership_audit")
    assert check.status == "failed"
    assert "score the rows differently" in check.summary
    assert report.check("exactness").status == "passed"  # the store itself is exact: only the audit saw a gap


class _AuditThatBreaksAfterTheCommit:
    """An ``ErasureAudit`` whose second half fails, as a store that refuses the audit record would."""

    def before_retrain(self, catalog, manifest, digests, hasher) -> None:  # type: ignore[no-untyped-def]
        pass

    def after_commit(self, catalog, manifest, receipt) -> str:  # type: ignore[no-untyped-def]
        raise OSError("the audit record could not be written")


def test_an_audit_that_fails_after_the_commit_never_reports_the_erasure_failed(tmp_path, hasher):
    rows = synthetic_ratings(SyntheticRatingsConfig(users=12, items=10, ratings_per_user=4, seed=2))
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    coordinator.train(rows, JobConfig(sharding=ShardingConfig(shards=2, slices=1)))
    subject = sorted(set(rows.column(SUBJECT_ID).to_pylist()))[0]
    receipt = coordinator.forget([subject], request_id="audit-breaks", audit=_AuditThatBreaksAfterTheCommit())
    assert receipt.status == "erased"
    assert receipt.chain_sequence == 1  # sealed into the receipt log all the same
    assert receipt.audit_error == "OSError: the audit record could not be written"
    report = verify_erasure(str(tmp_path / "store"), "audit-breaks", hasher, log_to_mlflow=False)
    assert report.passed
    audit = report.check("membership_audit")
    assert audit.status == "skipped"
    assert "did not complete after the commit" in audit.summary
