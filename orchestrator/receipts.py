"""Erasure receipts: what was removed (as keyed digests), what was retrained, and how long it took."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ErasureReceipt", "ShardRetrain"]


class ShardRetrain(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    shard: int
    first_affected_slice: int
    slices_retrained: tuple[int, ...]
    restarted_from: str | None  # checkpoint key; None = from scratch
    rows_removed: int
    seconds: float


class ErasureReceipt(BaseModel):
    """Returned for every erasure request; safe to store and show (no raw subject ids)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    request_id: str
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    status: Literal["erased", "not_found"]
    subject_digests: tuple[str, ...]
    not_found_digests: tuple[str, ...] = ()
    rows_removed: int = 0
    shards: tuple[ShardRetrain, ...] = ()
    untouched_shards: tuple[int, ...] = ()
    seconds: float = 0.0
    model_version_before: int | None = None
    model_version_after: int | None = None
    registry_version_before: str | None = None
    registry_version_after: str | None = None
    deleted_objects: tuple[str, ...] = ()

    @property
    def affected_shards(self) -> list[int]:
        return [s.shard for s in self.shards]
