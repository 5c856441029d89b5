"""The coordinator: one facade over training, ingest, erasure and serving of one store, sharing its session.

Each part works alone (``Trainer``, ``Eraser``, ``LiveEnsemble`` over a ``StoreSession``); the
coordinator builds all three on one session so that a version one publishes is the version the
others act on, and finishes on open what a crash interrupted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from expunge.orchestrator.catalog import Catalog, EnsembleManifest, PlacementIndex
from expunge.orchestrator.config import AnyModelConfig, EvidenceConfig, IngestConfig, JobConfig, StorageConfig
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.erasure.eraser import Eraser
from expunge.orchestrator.erasure.prefetch import Prefetch
from expunge.orchestrator.evidence.membership import ErasureAudit
from expunge.orchestrator.ingest import Ingester, PreparedIngest
from expunge.orchestrator.pool import ShardPool
from expunge.orchestrator.receipts import ErasureReceipt, IngestReceipt
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.serving.ensemble import StatisticsEnsemble
from expunge.orchestrator.serving.live import LiveEnsemble
from expunge.orchestrator.session import PoolFactory, StoreSession, local_pool, ray_pool
from expunge.orchestrator.training.streaming import RowBatches
from expunge.orchestrator.training.trainer import Trainer, TrainResult
from expunge.shards.store import ObjectStore

__all__ = ["Coordinator", "PoolFactory", "TrainResult", "local_pool", "ray_pool"]


class Coordinator:
    """Owns the shard pool for one store; every public method leaves the store at a committed state.

    ``training``, ``erasure`` and ``serving`` are the parts; the methods below delegate to them.
    """

    def __init__(
        self,
        storage: StorageConfig | str,
        hasher: SubjectHasher,
        lineage: Lineage | None = None,
        pool_factory: PoolFactory = ray_pool,
        evidence: EvidenceConfig | None = None,
    ) -> None:
        self.session = StoreSession(storage, hasher, pool_factory)
        self._lineage = lineage
        self.training = Trainer(self.session, lineage)
        # ``evidence``: where receipts are anchored outside the store (default: MLflow only).
        self.erasure = Eraser(self.session, lineage, evidence)
        self.serving = LiveEnsemble(self.session)
        self.ingestion = Ingester(self.session, lineage)
        self.erasure.finish_interrupted()

    # ----- the session ------------------------------------------------------------------------
    @property
    def lineage(self) -> Lineage | None:
        """The MLflow lineage every part records to (fixed at construction; None: tracking off)."""
        return self._lineage

    @property
    def storage(self) -> StorageConfig:
        return self.session.storage

    @property
    def store(self) -> ObjectStore:
        return self.session.store

    @property
    def catalog(self) -> Catalog:
        return self.session.catalog

    @property
    def hasher(self) -> SubjectHasher:
        return self.session.hasher

    @property
    def manifest(self) -> EnsembleManifest | None:
        """The published version this coordinator acts on (None before the first training)."""
        return self.session.manifest

    @property
    def pool(self) -> ShardPool:
        return self.session.pool

    def require_manifest(self) -> EnsembleManifest:
        """The published version; raises ``ConfigError`` for an untrained store or a wrong key."""
        return self.session.require_manifest()

    def placement_index(self) -> PlacementIndex:
        """The persisted subject placement of the published version (digests only)."""
        return self.session.placement_index()

    def close(self) -> None:
        """Stop the shard actors (a later call starts them again)."""
        self.session.close()

    # ----- training ---------------------------------------------------------------------------
    def train(
        self,
        rows: pa.Table,
        job: JobConfig,
        request_id: str | None = None,
        placement: PlacementIndex | None = None,
        model: AnyModelConfig | None = None,
    ) -> TrainResult:
        """``Trainer.train``: train every shard from scratch in parallel and publish a new version."""
        return self.training.train(rows, job, request_id, placement, model)

    def train_stream(
        self,
        batches: RowBatches,
        job: JobConfig,
        request_id: str | None = None,
        placement: PlacementIndex | None = None,
        model: AnyModelConfig | None = None,
        source: str = "training rows",
    ) -> TrainResult:
        """``Trainer.train_stream``: ``train`` on rows read batch by batch."""
        return self.training.train_stream(batches, job, request_id, placement, model, source)

    def apply_tombstones(self, rows: pa.Table, policy: str) -> tuple[pa.Table, int]:
        """``Trainer.apply_tombstones``: refuse or drop rows of subjects this store has erased."""
        return self.training.apply_tombstones(rows, policy)

    # ----- ingest -------------------------------------------------------------------------------
    def ingest(
        self,
        rows: pa.Table,
        request_id: str | None = None,
        settings: IngestConfig | None = None,
        source: str = "the ingest batch",
    ) -> IngestReceipt:
        """``Ingester.ingest``: add new rows, retraining only the shards that receive them, and publish."""
        return self.ingestion.ingest(rows, request_id, settings, source)

    def prepare_ingest(
        self,
        rows: pa.Table,
        request_id: str | None = None,
        settings: IngestConfig | None = None,
        source: str = "the ingest batch",
        erasing: Sequence[str] = (),
    ) -> PreparedIngest:
        """``Ingester.prepare``: validate and plan a batch, e.g. to join an erasure (``forget_digests(ingest=)``)."""
        return self.ingestion.prepare(rows, request_id, settings, source, erasing)

    # ----- erasure ------------------------------------------------------------------------------
    def forget(
        self,
        subject_ids: Sequence[object],
        request_id: str | None = None,
        audit: ErasureAudit | None = None,
        *,
        ticket: str | None = None,
        reason: str | None = None,
    ) -> ErasureReceipt:
        """``Eraser.forget``: erase every row of the subjects, retraining only the shards that held them."""
        return self.erasure.forget(subject_ids, request_id, audit, ticket=ticket, reason=reason)

    def forget_digests(
        self,
        digests: Sequence[str],
        request_id: str | None = None,
        audit: ErasureAudit | None = None,
        *,
        register: bool = True,
        resume: bool = True,
        ticket: str | None = None,
        reason: str | None = None,
        ingest: PreparedIngest | None = None,
        prefetched: Prefetch | None = None,
        after_commit: Callable[[], None] | None = None,
    ) -> ErasureReceipt:
        """``Eraser.forget_digests``: ``forget`` for subjects already digested with this store's key.

        ``ingest``: a prepared batch (``prepare_ingest(..., erasing=digests)``) joining this commit.
        ``prefetched``: its retrain started early (``Eraser.prefetch``); ``after_commit``: a hook run
        right after the publish.
        """
        return self.erasure.forget_digests(
            digests,
            request_id,
            audit,
            register=register,
            resume=resume,
            ticket=ticket,
            reason=reason,
            ingest=ingest,
            prefetched=prefetched,
            after_commit=after_commit,
        )

    def readmit(self, subject_ids: Sequence[object], reason: str, request_id: str | None = None) -> int:
        """``Eraser.readmit``: lift the tombstones of subjects who gave new consent."""
        return self.erasure.readmit(subject_ids, reason, request_id)

    def register_published(self) -> str | None:
        """``Eraser.register_published``: bring MLflow up to the published version."""
        return self.erasure.register_published()

    # ----- serving ------------------------------------------------------------------------------
    def follow_latest(self) -> EnsembleManifest:
        """The published version, re-read from the store (another process may have committed since)."""
        return self.serving.follow_latest()

    def predict(self, rows: pa.Table) -> np.ndarray:
        """``LiveEnsemble.predict``: ensemble predictions, shape (n,) ((n, classes) for classifiers)."""
        return self.serving.predict(rows)

    def statistics(self) -> StatisticsEnsemble:
        """``LiveEnsemble.statistics``: the summed shard states of a sufficient-statistics model."""
        return self.serving.statistics()

    def recommend(self, subject_id: object, k: int = 10) -> list[int]:
        """``LiveEnsemble.recommend``: the ``k`` best unrated items for the subject, best first."""
        return self.serving.recommend(subject_id, k)

    def constituent_tensors(self) -> dict[int, dict[str, Any]]:
        """``LiveEnsemble.constituent_tensors``: every constituent's weights and optimizer state, by shard."""
        return self.serving.constituent_tensors()
