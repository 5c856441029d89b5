"""What the erasure service reports about itself: the version it serves and its counters."""

from __future__ import annotations

import resource
from collections.abc import Mapping

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
    #: Commits with a purge (or receipt-log append) still being retried, and requests committed
    #: but not yet registered in MLflow; both drain by themselves (retried with backoff).
    pending_purges: int = 0
    pending_registrations: int = 0
    #: The cause of the last failed retry, if any is pending.
    pending_cause: str | None = None

    @classmethod
    def of(
        cls, counts: Mapping[str, int], queued: int, purges: int, unregistered: int, cause: str | None
    ) -> ServiceStats:
        """The stats of this process from its counters, with its peak RSS read now."""
        return cls(
            accepted=counts.get("accepted", 0),
            committed=counts.get("committed", 0),
            registered=counts.get("registered", 0),
            failed=counts.get("failed", 0),
            queued=queued,
            batches=counts.get("batches", 0),
            shard_retrains=counts.get("shard_retrains", 0),
            registrations=counts.get("registrations", 0),
            peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            pending_purges=purges,
            pending_registrations=unregistered,
            pending_cause=cause,
        )
