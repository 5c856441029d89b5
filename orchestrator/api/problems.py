"""One error shape for the HTTP API (RFC 9457 ``application/problem+json``), from the one exception hierarchy.

``problem_for`` maps an ``ExpungeError`` to its HTTP status: bad input 400, no or unknown token
401, missing scope 403, unknown request or subject 404, a reused idempotency key 409, rows that
fail validation (an ingest's) 422, a wait that timed out 504, infrastructure that is down for
now 503 (with ``Retry-After``); anything else is a bug, 500, whose detail says only that it was
logged. A 4xx changed nothing.
"""

from __future__ import annotations

import re

from expunge.client.models import Problem
from expunge.orchestrator.errors import (
    AuthenticationError,
    ClusterUnavailableError,
    ConfigError,
    DataValidationError,
    ErasureWaitTimeout,
    ExpungeError,
    IdempotencyConflictError,
    InvalidSubjectIdError,
    PermissionDeniedError,
    ServiceUnavailableError,
    ShardRetrainFailed,
    ShardStartTimeout,
    StorageUnavailableError,
    StoreBusyError,
    TrackingUnreachable,
    UnknownRequestError,
    UnknownSubjectError,
)

__all__ = ["RETRY_AFTER_S", "problem_for"]

#: ``Retry-After`` of a 503, in seconds.
RETRY_AFTER_S = 5

_STATUS: tuple[tuple[type[ExpungeError], int, str], ...] = (
    (AuthenticationError, 401, "Unauthorized"),
    (PermissionDeniedError, 403, "Forbidden"),
    (IdempotencyConflictError, 409, "Conflict"),
    (UnknownRequestError, 404, "Not Found"),
    (UnknownSubjectError, 404, "Not Found"),
    (ErasureWaitTimeout, 504, "Gateway Timeout"),
    (StoreBusyError, 503, "Service Unavailable"),
    (StorageUnavailableError, 503, "Service Unavailable"),
    (TrackingUnreachable, 503, "Service Unavailable"),
    (ServiceUnavailableError, 503, "Service Unavailable"),
    (ClusterUnavailableError, 503, "Service Unavailable"),
    (ShardStartTimeout, 503, "Service Unavailable"),
    (ShardRetrainFailed, 503, "Service Unavailable"),
    (ConfigError, 400, "Bad Request"),
    (InvalidSubjectIdError, 400, "Bad Request"),  # an id in a request's list, as a bad argument is
    (DataValidationError, 422, "Unprocessable Content"),  # rows: every problem listed
)


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name.removesuffix("Error")).lower()


def problem_for(exc: BaseException, instance: str | None = None) -> Problem:
    """The problem document of ``exc`` (its status in ``.status``); unknown exceptions are 500s."""
    for kind, status, title in _STATUS:
        if isinstance(exc, kind):
            name = type(exc).__name__
            detail = str(exc)
            if isinstance(exc, UnknownSubjectError):  # the serving layer's message names the store and the key
                detail = "the served model holds no rows of this subject (never seen, or erased)"
            return Problem(
                type=f"urn:expunge:problem:{_kebab(name)}",
                title=title,
                status=status,
                detail=detail,
                code=name,
                instance=instance,
            )
    return Problem(
        type="urn:expunge:problem:internal",
        title="Internal Server Error",
        status=500,
        detail="an unexpected error; it is logged in the service's log. Nothing is reported as done that was not.",
        code="ExpungeError",
        instance=instance,
    )
