"""``GET /v1/erasures/{ref}/evidence``: the verify report of a committed request, computed once and kept.

The report is ``expunge verify --request``'s (``expunge.orchestrator.evidence.verify``), run in
the service's process by digests only (the raw ids are never stored, so the scan looks for
digests), without writing to MLflow. It costs about one shard's training per affected shard, so
the first call is slow; the report is then kept in the journal (``journal/evidence/<id>.json``)
and served as it was when checked (its ``checked_at`` says when).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from expunge.orchestrator.errors import ConfigError, ServiceUnavailableError
from expunge.orchestrator.evidence.verify import verify_erasure
from expunge.orchestrator.service.core import ErasureService

__all__ = ["evidence_report"]

log = logging.getLogger(__name__)

_ONE_AT_A_TIME = threading.Lock()  # verifying retrains in this process: never two at once


def evidence_report(service: ErasureService, request_id: str) -> dict[str, Any]:
    """The stored verify report of ``request_id``, computing and storing it the first time.

    Raises:
        ConfigError: the request is not committed yet (evidence exists from the commit on).
        UnknownRequestError: no such request.
        ServiceUnavailableError: another request's evidence is being computed (HTTP 503; ask again).
    """
    store = service.coordinator.store
    key = f"journal/evidence/{request_id}.json"
    if store.exists(key):
        stored: dict[str, Any] = json.loads(store.get(key))
        return stored
    status = service.status(request_id)
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
        if store.exists(key):
            again: dict[str, Any] = json.loads(store.get(key))
            return again
        report = verify_erasure(
            service.job.storage, request_id, service.hasher, None, log_to_mlflow=False, evidence=service.job.evidence
        )
        text = report.model_dump_json()
        store.put(key, text.encode())
        log.info("evidence of %s: verify %s, kept in %s", request_id, report.status, key)
    finally:
        _ONE_AT_A_TIME.release()
    fresh: dict[str, Any] = json.loads(text)
    return fresh
