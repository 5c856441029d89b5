"""Erasure receipts: what was removed (as keyed digests), what was retrained, and how long it took."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

__all__ = ["BoundFile", "ErasureReceipt", "IngestReceipt", "ShardIngest", "ShardRetrain", "StateBinding", "utc_now"]


def utc_now() -> str:
    """The current time, UTC, ISO 8601: how receipts, the journal and registrations stamp events."""
    return datetime.now(UTC).isoformat()


class ShardRetrain(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    shard: int
    first_affected_slice: int
    slices_retrained: tuple[int, ...]
    restarted_from: str | None  # checkpoint key; None = from scratch
    rows_removed: int
    seconds: float


class BoundFile(BaseModel):
    """One stored file of a published state: its shard, what it is, the slice step it closes, and its hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    shard: int
    kind: Literal["manifest", "slice", "checkpoint"]
    #: The 0-based slice index (slices) or the slice the checkpoint closes; None for a manifest.
    step: int | None
    key: str
    sha256: str


class StateBinding(BaseModel):
    """Every file an ensemble version uses, in every shard, with its content hash (``evidence.state_binding``).

    Carried by the receipt of the commit that published the version, so the receipt log (and
    its anchors outside the store) fixes what the stored state must be: a file moved, copied or
    swapped between shards or steps no longer matches, even with its manifest rewritten.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    ensemble_version: int
    placement_key: str
    placement_sha256: str
    files: tuple[BoundFile, ...]
    #: Files carried over from the previous commit whose hash had changed since that commit
    #: bound them (tampering between commits), found when this binding was made; empty normally.
    carried_mismatches: tuple[str, ...] = ()


class ErasureReceipt(BaseModel):
    """Returned for every erasure request; safe to store and show (no raw subject ids)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    request_id: str
    created_at: str = Field(default_factory=utc_now)
    status: Literal["erased", "not_found"]
    subject_digests: tuple[str, ...]
    not_found_digests: tuple[str, ...] = ()
    #: Of ``not_found_digests``, those an earlier erasure of this store already removed (tombstoned).
    already_erased_digests: tuple[str, ...] = ()
    #: Rows of the named subjects that the commit removed. For a request the service coalesced
    #: with others (``batch_id`` set), the rows of this request's own subjects: a subject named by
    #: two coalesced requests counts in both.
    rows_removed: int = 0
    shards: tuple[ShardRetrain, ...] = ()
    untouched_shards: tuple[int, ...] = ()
    #: Wall time of the whole request up to the store commit and purge (routing, actor start if
    #: cold, and Ray's own start when a ``forget`` job started it for this request, retraining,
    #: commit), in seconds. MLflow time is not included.
    seconds: float = 0.0
    #: Wall time of the parallel retraining phase alone (affected actors already started), in seconds.
    retrain_seconds: float = 0.0
    #: Wall time of the same phase when every shard was last trained from scratch (measured by
    #: ``train`` and kept in the ensemble manifest), in seconds; 0 when not recorded.
    full_retrain_seconds: float = 0.0
    #: Store versions: the ensemble manifest versions before and after the commit.
    model_version_before: int | None = None
    model_version_after: int | None = None
    #: MLflow registered-model versions before and after (None when tracking is off).
    registry_version_before: str | None = None
    registry_version_after: str | None = None
    deleted_objects: tuple[str, ...] = ()
    #: When the store commit was done and the live ensemble served the new version (UTC, ISO 8601):
    #: from then on the subjects are gone from every answer. Stage one of two.
    committed_at: str | None = None
    #: When MLflow had the new version and every earlier version was purged (UTC, ISO 8601); None
    #: until then (the service registers after it answers; ``RayClient.wait``). Stage two.
    registered_at: str | None = None
    #: The request the service coalesced this one into (its store version, MLflow run and receipt-log
    #: entry carry that id); None when it ran alone.
    batch_id: str | None = None
    #: sha256 of the membership-inference audit record of this request
    #: (``receipts/audits/<request id>.json``, ``expunge.orchestrator.evidence.membership``); None when run without an audit.
    audit_sha256: str | None = None
    #: Why the membership audit configured for this erasure did not complete after the commit
    #: (``"<error type>: <message>"``); the erasure is committed all the same. None otherwise.
    audit_error: str | None = None
    #: Place in the store's receipt log (1 = the first request) and the sha256 of the stored bytes
    #: of the receipt before it (None for the first); set when the receipt is chained
    #: (``expunge.orchestrator.evidence.receipt_chain``).
    chain_sequence: int | None = None
    previous_receipt_sha256: str | None = None
    #: Steps after the commit that had not succeeded when this receipt was made, each
    #: ``"<step>: <cause>"`` (steps: purge, receipt, registration, receipt log). The erasure is
    #: committed regardless: these are retried with backoff until they succeed (the service's
    #: status shows them; any later writer of the store finishes a purge or registration on open).
    pending: tuple[str, ...] = ()
    #: The requester's reference (e.g. the privacy desk's case number) and why the request was
    #: made, both screened before anything was stored (``expunge.orchestrator.screening``):
    #: never a subject id, an e-mail address or a phone number. None when not given.
    ticket: str | None = None
    reason: str | None = None
    #: The request id of an ingest whose batch joined this commit (the service coalesces an
    #: ingest into the erasure it meets: one retrain per shard for both); its receipt is
    #: ``receipts/ingests/<id>.json``, and MLflow gets its run with this version. None otherwise.
    joined_ingest: str | None = None
    #: CPU time (user + system) of the retraining phase, summed over the affected shards' actors,
    #: in seconds: unlike ``retrain_seconds`` it does not grow when the machine is busy. 0 when not measured.
    retrain_cpu_seconds: float = 0.0
    #: CPU time of the last from-scratch training of every shard (summed over shards, seconds;
    #: kept in the ensemble manifest); 0 when not recorded. The baseline of ``cpu_speedup``.
    full_retrain_cpu_seconds: float = 0.0
    #: The stored state the commit published: every file of every shard with its sha256. None for
    #: a request that found nobody (nothing published) and in receipts written before it was recorded.
    state: StateBinding | None = None
    #: The service journal's log position when the receipt was chained (``evidence.journal_log``):
    #: its newest entry's number and sha256 (0 and None: the journal was empty), so a journal
    #: deleted or cut short after this point no longer reaches it.
    journal_sequence: int = 0
    journal_head_sha256: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _derived_fields_are_not_inputs(cls, data: Any) -> Any:
        # ``speedup`` is written out (JSON receipts, MLflow) but always recomputed on reading.
        if isinstance(data, dict) and ("speedup" in data or "cpu_speedup" in data):
            data = {k: v for k, v in data.items() if k not in ("speedup", "cpu_speedup")}
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def speedup(self) -> float:
        """``full_retrain_seconds / retrain_seconds``: the one meaning of "speed-up" in Expunge.

        Both sides are the retraining phase only, measured on the same pool, so process start,
        Ray start, actor spawn and MLflow never count on one side only. 0.0 when either side
        is unknown (nothing retrained, or the store was trained before this was recorded).
        """
        if self.retrain_seconds <= 0 or self.full_retrain_seconds <= 0:
            return 0.0
        return self.full_retrain_seconds / self.retrain_seconds

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cpu_speedup(self) -> float:
        """``full_retrain_cpu_seconds / retrain_cpu_seconds``: the speed-up in CPU time, steady under machine load.

        0.0 when either side is unknown. The ideal for SISA is about ``shards * slices`` over the
        slices retrained (Bourtoule et al., IEEE S&P 2021, section V).
        """
        if self.retrain_cpu_seconds <= 0 or self.full_retrain_cpu_seconds <= 0:
            return 0.0
        return self.full_retrain_cpu_seconds / self.retrain_cpu_seconds

    @property
    def affected_shards(self) -> list[int]:
        return [s.shard for s in self.shards]


class ShardIngest(BaseModel):
    """What one shard did in an ingest: rows added, the slices whose steps retrained, any compaction."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    shard: int
    rows_added: int
    #: Slice indexes whose steps retrained (the new tail, or from the first slice a known subject joined).
    slices_retrained: tuple[int, ...]
    restarted_from: str | None  # checkpoint key; None = from scratch
    #: Old slice indexes a compaction merged into one (``slices_merged[0]`` holds them now); empty if none.
    slices_merged: tuple[int, ...] = ()
    slices_after: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0


class IngestReceipt(BaseModel):
    """What ``expunge ingest`` did with one batch; safe to store and show (counts and keyed digests only).

    Kept in the store at ``receipts/ingests/<request id>.json`` and on the ingest's MLflow run.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    request_id: str
    created_at: str = Field(default_factory=utc_now)
    #: ``ingested``: a new version was published; ``nothing_new``: every row was already stored or refused.
    status: Literal["ingested", "nothing_new"]
    #: Keyed digest of the batch (``SubjectHasher.label`` of its sorted record ids): the same batch
    #: always has the same digest, and the digest reveals no record id.
    batch_digest: str
    rows_in_batch: int
    rows_added: int
    #: Rows of subjects this store has erased (tombstoned, not re-admitted): refused, never stored.
    rows_refused_erased: int = 0
    subjects_refused_erased: int = 0
    #: Rows whose record id the store already holds for the same subject (a batch given twice).
    rows_already_stored: int = 0
    subjects_added: int = 0
    new_subjects: int = 0
    shards: tuple[ShardIngest, ...] = ()
    untouched_shards: tuple[int, ...] = ()
    #: Wall time of the whole ingest up to the store commit and purge, in seconds (MLflow not included).
    seconds: float = 0.0
    #: Wall time of the parallel retraining phase (actors started), in seconds.
    retrain_seconds: float = 0.0
    #: CPU time of the retraining phase summed over the touched shards' actors, in seconds.
    retrain_cpu_seconds: float = 0.0
    #: CPU time of the last from-scratch training of every shard (the manifest's), in seconds.
    full_retrain_cpu_seconds: float = 0.0
    #: CPU time of this process for the ingest (validation, digests, duplicate check, commit), in seconds.
    driver_cpu_seconds: float = 0.0
    model_version_before: int | None = None
    model_version_after: int | None = None
    registry_version_before: str | None = None
    registry_version_after: str | None = None
    committed_at: str | None = None
    registered_at: str | None = None
    deleted_objects: tuple[str, ...] = ()
    #: Steps after the commit that had not succeeded (``"<step>: <cause>"``; purge, receipt, registration).
    pending: tuple[str, ...] = ()

    @property
    def touched_shards(self) -> list[int]:
        return [s.shard for s in self.shards]

    @property
    def cpu_fraction(self) -> float:
        """``retrain_cpu_seconds / full_retrain_cpu_seconds``: the ingest's CPU against a full retrain (0: unknown)."""
        if self.full_retrain_cpu_seconds <= 0:
            return 0.0
        return self.retrain_cpu_seconds / self.full_retrain_cpu_seconds
