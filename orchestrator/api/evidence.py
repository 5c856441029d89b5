"""``GET /v1/erasures/{ref}/evidence``: the verify report of a committed request, computed once and kept.

The report is ``expunge verify --request``'s (``expunge.orchestrator.evidence.verify``), run in
the service's process by digests only (the raw ids are never stored, so the scan looks for
digests), without writing to MLflow. It costs about one shard's training per affected shard, so
the first call is slow; the report is then kept in this process's memory (the newest 256) and
served as it was when checked (its ``checked_at`` says when). Not in the store: a copy there
could be written by anyone who can write the store, and a planted "passed" would be served.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from typing import Any

from expunge.orchestrator.errors import ConfigError, ServiceUnavailableError
from expunge.orchestrator.evidence.verify import verify_erasure
from expunge.orchestrator.service.core import ErasureService

__all__ = ["evidence_report"]

log = logging.getLogger(__name__)

_CACHED = 256
_CACHE: OrderedDict[tuple[str, str], str] = OrderedDict()  # (store, request id) -> report JSON, this process only
_CACHE_LOCK = threading.Lock()
_ONE_AT_A_TIME = threading.Lock()  # verifying retrains in this process: never two at once


def evidence_report(service: ErasureService, request_id: str) -> dict[str, Any]:
    """The verify report of the request ``request_id`` names, computed the first time and kept in memory.

    Raises:
        ConfigError: the request is not committed yet (evidence exists from the commit on).
        UnknownRequestError: no such request.
        ServiceUnavailableError: another request's evidence is being computed (HTTP 503; ask again).
    """
    status = service.status(request_id)
    request_id = status.request_id  # a key or a ticket names the same report as the id
    slot = (service.job.storage.uri, request_id)
    with _CACHE_LOCK:
        cached = _CACHE.get(slot)
    if cached is not None:
        found: dict[str, Any] = json.loads(cached)
        return found
    if status.receipt is None:
        raise ConfigError(
            f"request {request_id} is {status.state}: its evidence exists once it is committed; poll "
            f"GET /v1/erasures/{request_id} until committed_at is set"
        )
    if not _ONE_AT_A_TIME.acquire(blocking=False):
        # One verify at a time, and callers never queue on it: they would hold the API's threads.
        raise ServiceUnavailableError(
            "the evidence of another request is being computed (a verify retrains the affected shards); "
            "ask again in a moment"
        )
    try:
        with _CACHE_LOCK:
            again = _CACHE.get(slot)
        if again is not None:
            kept: dict[str, Any] = json.loads(again)
            return kept
        report = verify_erasure(
            service.job.storage, request_id, service.hasher, None, log_to_mlflow=False, evidence=service.job.evidence
        )
        text = report.model_dump_json()
        with _CACHE_LOCK:
            _CACHE[slot] = text
            while len(_CACHE) > _CACHED:
                _CACHE.popitem(last=False)
        log.info("evidence of %s: verify %s, kept in memory", request_id, report.status)
    finally:
        _ONE_AT_A_TIME.release()
    fresh: dict[str, Any] = json.loads(text)
    return fresh
