"""Helpers for engine tests: train, forget, and train from scratch without the subject."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from expunge.orchestrator.config import (
    AnyModelConfig,
    JobConfig,
    MFConfig,
    ServiceConfig,
    ShardingConfig,
    StorageConfig,
    TrackingConfig,
    TrainingConfig,
)
from expunge.orchestrator.coordinator import Coordinator, PoolFactory, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.shards.rows import SUBJECT_ID

T = TypeVar("T")


def job(
    model: AnyModelConfig | None = None, shards: int = 3, slices: int = 4, placement: str = "balanced"
) -> JobConfig:
    return JobConfig(
        sharding=ShardingConfig(shards=shards, slices=slices, placement=placement),
        training=TrainingConfig(
            model=model or MFConfig(embedding_dim=4), epochs=3, batch_size=32, learning_rate=0.02, cpus_per_shard=0.5
        ),
    )


def service_job(path: Path, model: AnyModelConfig, shards: int = 3, slices: int = 2, **service: object) -> JobConfig:
    """``job`` with its store under ``path / "store"``, MLflow off and these ``service`` settings (window 0 unless given)."""
    return job(model=model, shards=shards, slices=slices).model_copy(
        update={
            "storage": StorageConfig(uri=str(path / "store")),
            "tracking": TrackingConfig(enabled=False),
            "service": ServiceConfig.model_validate({"window_ms": 0, **service}),
        }
    )


def without(rows: pa.Table, subjects: list[str]) -> pa.Table:
    return rows.filter(pc.invert(pc.is_in(rows.column(SUBJECT_ID), value_set=pa.array(subjects))))


def from_scratch(
    tmp: Path,
    coordinator: Coordinator,
    rows: pa.Table,
    config: JobConfig,
    hasher: SubjectHasher,
    pool: PoolFactory = local_pool,
    pin_placement: bool = True,
) -> Coordinator:
    """SISA training from scratch on ``rows``, with the persisted placement when pinned."""
    assert coordinator.manifest is not None
    reference = Coordinator(str(tmp / "reference"), hasher, pool_factory=pool)
    reference.train(
        rows,
        config,
        placement=coordinator.placement_index() if pin_placement else None,
        model=coordinator.manifest.model,
    )
    return reference


def subject_in_slice(coordinator: Coordinator, hasher: SubjectHasher, subjects: list[str], wanted_slice: int) -> str:
    homes = coordinator.placement_index().home_cells()
    return next(s for s in sorted(subjects) if homes[hasher.digest(s)].slice == wanted_slice)


def store_snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def until(check: Callable[[], T], what: str, bound_s: float = 120.0, poll_s: float = 0.05) -> T:
    """``check()``'s first truthy value, polled every ``poll_s``; fails after ``bound_s`` seconds.

    The bound only catches a hang (a retry or a thread that never ends); it is not a speed target.
    """
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(poll_s)
    raise AssertionError(f"not within {bound_s:g} s: {what}")
