"""What the erasure service reports about itself: the version it serves and its counters."""

from __future__ import annotations

import resource
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

__all__ = ["LATENCY_BUCKETS_S", "Latency", "ServedVersion", "ServiceStats", "StageClock"]


class ServedVersion(BaseModel):
    """What the service serves now."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ensemble_version: int
    registry_version: str | None
    model_name: str | None
    shards: int
    slices: int


#: Upper bounds of the stage-latency histogram buckets, in seconds (Prometheus ``le``).
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0)


class Latency(BaseModel):
    """A histogram of one stage's latency, in seconds: ``counts[i]`` requests took at most ``buckets[i]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    buckets: tuple[float, ...]
    counts: tuple[int, ...]  # cumulative, as Prometheus wants them
    count: int
    sum: float


class StageClock:
    """Mutable histograms of stage latencies (from a request's receipt to the stage); not thread-safe alone.

    The board records into it under the service's condition.
    """

    def __init__(self) -> None:
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, stage: str, seconds: float) -> None:
        counts = self._counts.setdefault(stage, [0] * (len(LATENCY_BUCKETS_S) + 1))
        index = next((i for i, bound in enumerate(LATENCY_BUCKETS_S) if seconds <= bound), len(LATENCY_BUCKETS_S))
        counts[index] += 1
        self._sums[stage] = self._sums.get(stage, 0.0) + max(seconds, 0.0)

    def snapshot(self) -> dict[str, Latency]:
        out = {}
        for stage, counts in self._counts.items():
            cumulative = [sum(counts[: i + 1]) for i in range(len(LATENCY_BUCKETS_S))]
            out[stage] = Latency(
                buckets=LATENCY_BUCKETS_S, counts=tuple(cumulative), count=sum(counts), sum=self._sums[stage]
            )
        return out


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
    #: A batch waiting, before its commit, for a store that does not answer or holds a symbolic link:
    #: ``"<batch id>: <cause>"``. Its requests stay accepted, and the requests behind it wait too.
    waiting_cause: str | None = None
    #: Latency from a request's receipt to each stage it reached in this process (committed, ready, registered).
    latency: dict[str, Latency] = {}
    #: Ingests this process answered, by outcome, and the rows they added.
    ingested: int = 0
    #: Batches whose shards started retraining at the commit before theirs (``service.pipeline``).
    batches_ahead: int = 0
    ingests_nothing_new: int = 0
    ingests_failed: int = 0
    rows_ingested: int = 0

    @classmethod
    def of(
        cls,
        counts: Mapping[str, int],
        queued: int,
        purges: int,
        unregistered: int,
        cause: str | None,
        latency: Mapping[str, Latency] | None = None,
        waiting: str | None = None,
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
            waiting_cause=waiting,
            latency=dict(latency or {}),
            ingested=counts.get("ingests_ingested", 0),
            batches_ahead=counts.get("batches_ahead", 0),
            ingests_nothing_new=counts.get("ingests_nothing_new", 0),
            ingests_failed=counts.get("ingests_failed", 0),
            rows_ingested=counts.get("rows_ingested", 0),
        )
