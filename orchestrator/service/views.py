"""What the erasure service reports about itself: the version it serves and its counters."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["ServedVersion", "ServiceStats"]


class ServedVersion(BaseModel):
    """What the service serves now."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ensemble_version: int
    registry_version: str | None
    model_name: str | None
    shards: int
    slices: int


class ServiceStats(BaseModel):
    """Counters since the service (this process) started; memory in bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    accepted: int
    committed: int
    registered: int
    failed: int
    queued: int
    batches: int
    shard_retrains: int
    registrations: int
    peak_rss_bytes: int
