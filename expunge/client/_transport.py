"""What the sync and async clients share: request building, the retry rule, and problem -> typed error.

Pure functions and small frozen objects with no I/O, so both clients (and their tests) use one rule.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import os
import re
import ssl
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from expunge.client.models import API_PREFIX, Erasure, Problem
from expunge.orchestrator import errors
from expunge.orchestrator.errors import (
    ConfigError,
    ErasureWaitTimeout,
    ExpungeError,
    InvalidSubjectIdError,
    ServiceUnavailableError,
)

__all__ = [
    "Call",
    "RetryPolicy",
    "WaitStage",
    "check_poll_s",
    "check_stage",
    "check_subject_ids",
    "check_timeout",
    "error_from_response",
    "failed_error",
    "interrupted_error",
    "iso_time",
    "new_idempotency_key",
    "quoted",
    "reached",
    "reply_json",
    "retry_after_s",
    "retryable_response",
    "retryable_transport_error",
    "server_url",
    "ssl_verify",
    "unreachable_error",
    "wait_timeout_error",
]

WaitStage = Literal["committed", "done"]

#: Statuses that say "try again later": the service's storage, lease or MLflow (503), or a proxy in
#: front of it (502, 504). Nothing else is retried: a 4xx changed nothing and will not change.
_RETRY_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class Call:
    """One API call: ``method`` ``path`` (under ``/v1``) with a JSON ``body`` and query ``params``.

    ``idempotent``: sending it twice does what sending it once does (every GET, an erasure with
    its idempotency key, recommendations, predictions). Only such a call is sent again after an
    error that may have reached the server (a read timeout, a dropped connection, 502, 504); every
    call is sent again after errors that prove it was not handled (connection refused, 503).
    """

    method: Literal["GET", "POST", "DELETE"]
    path: str
    body: Mapping[str, Any] | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    idempotent: bool = True
    #: The idempotency key the body carries, named in the error when the service stays unreachable.
    key: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often a call is sent again: ``retry_s`` seconds in all, pauses doubling to ``max_pause_s``."""

    retry_s: float
    first_pause_s: float = 0.2
    max_pause_s: float = 5.0

    def pause_s(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt ``attempt + 1``: the server's ``Retry-After`` when it sent one."""
        if retry_after is not None:
            return retry_after
        return min(self.first_pause_s * 2**attempt, self.max_pause_s)


def server_url(url: str) -> str:
    """The API's base URL (``http://host:8470/v1``) from the service's URL, with or without ``/v1``.

    Raises:
        ConfigError: not an ``http://`` or ``https://`` URL.
    """
    base = url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ConfigError(f"url {url!r}: give the service's http:// or https:// URL, e.g. http://127.0.0.1:8470")
    return base if base.endswith(API_PREFIX) else base + API_PREFIX


def ssl_verify(verify: bool | str | os.PathLike[str]) -> bool | ssl.SSLContext:
    """httpx's ``verify``: True (system CAs), False (no check; tests only) or a CA bundle's path."""
    if isinstance(verify, bool):
        return verify
    return ssl.create_default_context(cafile=os.fspath(verify))


def check_timeout(timeout: float | None, name: str = "timeout") -> float | None:
    """Seconds as a finite number (0 or less: do not wait), or None for no limit.

    Raises:
        ConfigError: NaN, infinity, a bool or not a number.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout):
        raise ConfigError(f"{name} {timeout!r}: give seconds as a finite number, or None for no limit")
    return float(timeout)


def check_poll_s(poll_s: float) -> float:
    """A polling interval in seconds: finite and positive.

    Raises:
        ConfigError: zero, negative, NaN, infinity or not a number.
    """
    checked = check_timeout(poll_s, "poll_s")
    if checked is None or checked <= 0:
        raise ConfigError(f"poll_s {poll_s!r}: give the seconds between two status calls, a positive number")
    return checked


def check_subject_ids(subject_ids: object) -> list[str | int]:
    """The ids as a list after a light check; the server applies the full identity rule.

    A list or tuple of str or int (not bool), at least one. A single string is refused: it would
    otherwise be read as one id per character. Refused ids are named by position (from 1), never by value.

    Raises:
        ConfigError: not a list or tuple, or an empty one.
        InvalidSubjectIdError: an element that is not a str or int, or is a bool.
    """
    if not isinstance(subject_ids, list | tuple):
        raise ConfigError(
            f'subject_ids must be a list of ids, e.g. forget(["user-7"]), not a {type(subject_ids).__name__}; '
            "a single string would be read as one id per character"
        )
    if not subject_ids:
        raise ConfigError("subject_ids is empty: name at least one subject")
    problems = [
        f"subject id {position} is a {type(value).__name__}, not an id; give a str or an int"
        for position, value in enumerate(subject_ids, 1)  # counted from 1, as the identity rule does
        if isinstance(value, bool) or not isinstance(value, str | int)
    ]
    if problems:
        raise InvalidSubjectIdError("subject_ids", problems)
    return list(subject_ids)


def new_idempotency_key() -> str:
    """A key for a request the caller gave none: made once per call, before its first attempt."""
    return f"sdk-{uuid.uuid4().hex}"


def iso_time(value: str | dt.datetime | None, name: str) -> str | None:
    """An ISO 8601 time for the wire: text as given, a datetime with its offset.

    Raises:
        ConfigError: a datetime without a timezone (the service's clock is UTC; say which you mean).
    """
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ConfigError(
            f"{name} {value.isoformat()}: a datetime without a timezone; give e.g. datetime.now(timezone.utc)"
        )
    return value.isoformat()


def quoted(ref: object) -> str:
    """A request id, idempotency key or ticket as one path segment (``/`` and spaces escaped).

    ``submit``'s answer (``ErasureAccepted``, or anything with a ``request_id``) stands for its request id.

    Raises:
        ConfigError: an empty or non-text reference.
    """
    own_id = getattr(ref, "request_id", None)
    if isinstance(own_id, str):
        ref = own_id
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError(
            f"ref {ref!r}: give a request id (submit's answer has it: accepted.request_id), an idempotency key "
            "or a ticket"
        )
    return quote(ref, safe="")


# ----- retries ----------------------------------------------------------------------------------


def retryable_transport_error(exc: httpx.TransportError, call: Call) -> bool:
    """True when ``call`` may be sent again after ``exc``.

    A connection that was never made (refused, connect or pool timeout) is always retried; an
    error after the request went out (read timeout, dropped connection) only for an idempotent call.
    """
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return True
    return call.idempotent and isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError)


def retryable_response(response: httpx.Response, call: Call) -> bool:
    """True for 503 (nothing was done), and for a proxy's 502/504 when ``call`` is idempotent.

    A 502/504 that is the service's own problem document (e.g. ``ErasureWaitTimeout``) is its
    answer, not a proxy's, and is raised as it is.
    """
    if response.status_code == 503:
        return True
    return call.idempotent and response.status_code in _RETRY_STATUSES and _problem(response) is None


def _problem(response: httpx.Response) -> Problem | None:
    try:
        return Problem.model_validate_json(response.content)
    except ValidationError:
        return None


def retry_after_s(response: httpx.Response, now: dt.datetime | None = None) -> float | None:
    """The ``Retry-After`` header in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


def interrupted_error(url: str, call: Call, cause: Exception) -> ServiceUnavailableError:
    """The error for a call that is not idempotent and failed after it was sent: it may have been carried out."""
    return ServiceUnavailableError(
        f"{call.method} {url}{call.path} failed after it was sent ({type(cause).__name__}: {cause}); it may or may "
        "not have been carried out: check (e.g. list the tokens) before sending it again"
    )


def unreachable_error(url: str, cause: Exception, waited_s: float, key: str | None) -> ServiceUnavailableError:
    """The error for a service that did not answer within the retry budget."""
    again = f" with the same idempotency key {key!r}" if key else ""
    return ServiceUnavailableError(
        f"the Expunge service at {url} did not answer within {waited_s:.0f} s ({type(cause).__name__}: {cause}); "
        f"check that it runs (`expunge serve`) and that the URL is right, then call again{again}"
    )


# ----- errors -----------------------------------------------------------------------------------

#: The error class for an answer without a problem body (e.g. a proxy's HTML page), by status.
_BY_STATUS: dict[int, type[ExpungeError]] = {
    400: ConfigError,
    401: errors.AuthenticationError,
    403: errors.PermissionDeniedError,
    404: errors.UnknownRequestError,
    409: errors.IdempotencyConflictError,
    422: ConfigError,
    502: ServiceUnavailableError,
    503: ServiceUnavailableError,
    504: ServiceUnavailableError,
}


def error_from_response(response: httpx.Response) -> ExpungeError:
    """The typed error for an error response: the class the problem's ``code`` names, the server's ``detail`` as message.

    An unknown ``code`` gives ``ExpungeError``; a body that is no problem document gives the
    class of its status (``_BY_STATUS``) with the status and the start of the body.
    """
    problem = _problem(response)
    if problem is None:
        cls = _BY_STATUS.get(response.status_code, ExpungeError)
        text = " ".join(response.text.split())[:300]
        return _reported(cls)(f"HTTP {response.status_code} from {response.request.url}: {text or '(no body)'}")
    found = getattr(errors, problem.code, None)
    cls = found if isinstance(found, type) and issubclass(found, ExpungeError) else ExpungeError
    return _reported(cls)(problem.detail)


def _message_init(self: ExpungeError, message: str) -> None:
    Exception.__init__(self, message)


def _message_str(self: ExpungeError) -> str:
    return str(self.args[0]) if self.args else ""


def _message_reduce(self: ExpungeError) -> tuple[Any, tuple[type[ExpungeError], str]]:
    return (_rebuild, (type(self).__mro__[1], _message_str(self)))


def _rebuild(cls: type[ExpungeError], message: str) -> ExpungeError:
    return _reported(cls)(message)


#: The subclasses ``_reported`` made, so that one class stays one class (``except`` and pickling).
_REPORTED: dict[type[ExpungeError], type[ExpungeError]] = {}


def _reported(cls: type[ExpungeError]) -> type[ExpungeError]:
    """``cls`` when it takes its message as its one argument; else a subclass of it that does.

    Some errors build their message from fields (``DataValidationError(source, problems)``); the
    server already sent the message, so the client raises it as given: ``isinstance`` and
    ``except`` work as for ``cls``, its extra attributes are not rebuilt, and it still pickles.
    """
    if cls.__init__ is Exception.__init__ and cls.__str__ is Exception.__str__:
        return cls
    if cls in _REPORTED:
        return _REPORTED[cls]
    namespace = {
        "__init__": _message_init,
        "__str__": _message_str,
        "__reduce__": _message_reduce,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
    }
    reported: type[ExpungeError] = type(cls.__name__, (cls,), namespace)
    return _REPORTED.setdefault(cls, reported)


# ----- waiting ----------------------------------------------------------------------------------


def reached(erasure: Erasure, stage: WaitStage) -> bool:
    """True once the request is at ``stage`` or past it; ``done``: registered with nothing pending."""
    if stage == "committed":
        return erasure.stage in ("committed", "registered")
    return erasure.done_at is not None or erasure.state == "done"


def failed_error(erasure: Erasure) -> ExpungeError:
    """The error ``wait`` raises for a request that failed (before its commit: nothing was erased)."""
    return ExpungeError(
        f"request {erasure.request_id} failed: {erasure.error}. Nothing was erased by it; fix the cause, then "
        "submit again with a new idempotency key"
    )


def wait_timeout_error(erasure: Erasure, stage: WaitStage, timeout: float) -> ErasureWaitTimeout:
    """The error ``wait`` raises when ``timeout`` seconds passed first."""
    return ErasureWaitTimeout(
        f"request {erasure.request_id} is {erasure.state!r}, not yet {stage}, after {timeout:g} s; it goes on: "
        "call wait again or status later"
    )


def check_stage(stage: object) -> WaitStage:
    """``committed`` or ``done``.

    Raises:
        ConfigError: any other stage.
    """
    if stage == "committed":
        return "committed"
    if stage == "done":
        return "done"
    raise ConfigError(f"stage {stage!r}: wait for 'committed' or 'done'")


def reply_json(response: httpx.Response) -> Any:
    """The body of a successful response.

    Raises:
        ExpungeError: a 2xx answer that is not JSON (something else answers at the URL).
    """
    try:
        return response.json()
    except ValueError as exc:
        raise ExpungeError(
            f"HTTP {response.status_code} from {response.request.url} is not JSON; is the URL the Expunge service's?"
        ) from exc


_REF_PATH = re.compile(r"^(/v1/erasures/)[^?]+?(/evidence|/extension)?(\?.*)?$")
_TOKEN_PATH = re.compile(r"^/v1/tokens/.+$")


def logged_path(path: str) -> str:
    """A call's path as it may be logged: a reference (request id, key or ticket) or a token id replaced."""
    if _TOKEN_PATH.match(path):
        return "/v1/tokens/{token_id}"
    match = _REF_PATH.match(path)
    return f"{match.group(1)}{{ref}}{match.group(2) or ''}" if match else path.split("?", 1)[0]
