"""``/metrics`` in the Prometheus text format (version 0.0.4): the service's queue, its backlog and its clock.

Names (all prefixed ``expunge_``): ``queue_depth``, ``pending_purges``, ``ingests_total{outcome}``,
``ingested_rows_total``,
``pending_registrations``, ``requests{state=...}`` (pending, late, done, failed, from the
journal), ``request_stage_seconds`` (histogram, from receipt to each stage), ``requests_total``
(this process's counters by stage), ``http_requests_total{route,method,code}`` and
``http_request_seconds`` (histogram by route).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Mapping

from expunge.orchestrator.service.views import LATENCY_BUCKETS_S, Latency, ServiceStats, StageClock

__all__ = ["HttpMetrics", "render"]


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in labels.items()
    )
    return "{" + inner + "}"


def _histogram(name: str, latency: Latency, **labels: str) -> list[str]:
    lines = []
    for bound, count in zip(latency.buckets, latency.counts, strict=True):
        lines.append(f"{name}_bucket{_labels(**labels, le=repr(float(bound)))} {count}")
    lines.append(f"{name}_bucket{_labels(**labels, le='+Inf')} {latency.count}")
    lines.append(f"{name}_sum{_labels(**labels)} {latency.sum}")
    lines.append(f"{name}_count{_labels(**labels)} {latency.count}")
    return lines


class HttpMetrics:
    """Counts and latencies of the API's own calls, by route template (never by raw path); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._clock = StageClock()

    def observe(self, route: str, method: str, code: int, seconds: float) -> None:
        with self._lock:
            self._calls[(route, method, str(code))] += 1
            self._clock.observe(route, seconds)

    def lines(self) -> list[str]:
        with self._lock:
            calls = dict(self._calls)
            latency = self._clock.snapshot()
        out = ["# HELP expunge_http_requests_total HTTP calls by route template, method and status code.",
               "# TYPE expunge_http_requests_total counter"]  # fmt: skip
        out += [
            f"expunge_http_requests_total{_labels(route=r, method=m, code=c)} {n}"
            for (r, m, c), n in sorted(calls.items())
        ]
        out += ["# HELP expunge_http_request_seconds Time to answer an HTTP call, by route template.",
                "# TYPE expunge_http_request_seconds histogram"]  # fmt: skip
        for route, histogram in sorted(latency.items()):
            out += _histogram("expunge_http_request_seconds", histogram, route=route)
        return out


def render(stats: ServiceStats, by_state: Mapping[str, int], http: HttpMetrics) -> str:
    """The exposition text: service gauges, the journal's requests by state, stage and HTTP latencies."""
    out = [
        "# HELP expunge_queue_depth Erasure requests accepted and waiting for a retrain.",
        "# TYPE expunge_queue_depth gauge",
        f"expunge_queue_depth {stats.queued}",
        "# HELP expunge_pending_purges Commits whose purge or receipt-log step is being retried.",
        "# TYPE expunge_pending_purges gauge",
        f"expunge_pending_purges {stats.pending_purges}",
        "# HELP expunge_pending_registrations Committed requests not yet registered in MLflow.",
        "# TYPE expunge_pending_registrations gauge",
        f"expunge_pending_registrations {stats.pending_registrations}",
        "# HELP expunge_requests Requests in the journal by state (late: pending past the GDPR due date).",
        "# TYPE expunge_requests gauge",
    ]
    out += [f"expunge_requests{_labels(state=s)} {by_state.get(s, 0)}" for s in ("pending", "late", "done", "failed")]
    out += ["# HELP expunge_requests_total Requests this service process moved to each stage.",
            "# TYPE expunge_requests_total counter"]  # fmt: skip
    for stage in ("accepted", "committed", "registered", "failed"):
        out.append(f"expunge_requests_total{_labels(stage=stage)} {getattr(stats, stage)}")
    out += ["# HELP expunge_ingests_total Ingests this service process answered, by outcome.",
            "# TYPE expunge_ingests_total counter"]  # fmt: skip
    outcomes = {"ingested": stats.ingested, "nothing_new": stats.ingests_nothing_new, "failed": stats.ingests_failed}
    out += [f"expunge_ingests_total{_labels(outcome=o)} {n}" for o, n in outcomes.items()]
    out += ["# HELP expunge_ingested_rows_total Rows the answered ingests of this process added.",
            "# TYPE expunge_ingested_rows_total counter",
            f"expunge_ingested_rows_total {stats.rows_ingested}"]  # fmt: skip
    out += ["# HELP expunge_request_stage_seconds Time from a request's receipt to each stage, in seconds.",
            "# TYPE expunge_request_stage_seconds histogram"]  # fmt: skip
    for stage in ("committed", "registered"):
        latency = stats.latency.get(stage) or Latency(
            buckets=LATENCY_BUCKETS_S, counts=(0,) * len(LATENCY_BUCKETS_S), count=0, sum=0.0
        )
        out += _histogram("expunge_request_stage_seconds", latency, stage=stage)
    out += http.lines()
    return "\n".join(out) + "\n"
