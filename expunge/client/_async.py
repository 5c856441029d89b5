"""``AsyncClient``: the asyncio HTTP client of one Expunge service (httpx.AsyncClient); ``Client``'s twin."""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import logging
import os
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from expunge import __version__
from expunge.client import _calls
from expunge.client._transport import (
    Call,
    RetryPolicy,
    WaitStage,
    check_poll_s,
    check_stage,
    check_timeout,
    error_from_response,
    failed_error,
    interrupted_error,
    logged_path,
    reached,
    reply_json,
    retry_after_s,
    retryable_response,
    retryable_transport_error,
    server_url,
    ssl_verify,
    unreachable_error,
    wait_timeout_error,
)
from expunge.client.models import (
    Erasure,
    ErasureAccepted,
    ErasureList,
    Health,
    Ingestion,
    ListState,
    Predictions,
    Readmitted,
    Recommendations,
    Scope,
    TokenCreated,
    TokenInfo,
)

__all__ = ["AsyncClient"]

log = logging.getLogger("expunge.client")


class AsyncClient:
    """``Client`` for asyncio: the same methods, each a coroutine; see ``Client`` for arguments and errors.

    In a coroutine::

        async with AsyncClient("http://127.0.0.1:8470", token) as client:
            erasure = await client.forget(["user-7"], ticket="GDPR-2026-0042")
            await client.wait(erasure.request_id, stage="done", timeout=600)
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        retry_s: float = 60.0,
        verify: bool | str | os.PathLike[str] = True,
    ) -> None:
        self.url = server_url(url)
        self._retry = RetryPolicy(retry_s=check_timeout(retry_s, "retry_s") or 0.0)
        headers = {"User-Agent": f"expunge-client/{__version__}", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=check_timeout(timeout),
            verify=ssl_verify(verify),
        )

    async def close(self) -> None:
        """Close the connection pool; the client cannot be used after."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _send(self, call: Call, timeout: httpx.Timeout | None = None) -> Any:
        """Send ``call``, again after a retryable failure until ``retry_s`` is spent; the reply's JSON.

        ``timeout``: this call's own (None: the client's).
        """
        limit = timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method, call.path, json=call.body, params=dict(call.params), timeout=limit
                )
            except httpx.TransportError as exc:
                if not retryable_transport_error(exc, call):
                    raise interrupted_error(self.url, call, exc) from exc
                pause = self._retry.pause_s(attempt, None)
                if time.monotonic() - started + pause > self._retry.retry_s:
                    raise unreachable_error(self.url, exc, time.monotonic() - started, call.key) from exc
                log.warning(
                    "%s %s: %s; trying again in %.1f s", call.method, logged_path(call.path), type(exc).__name__, pause
                )
            else:
                if response.is_success:
                    return reply_json(response)
                error = error_from_response(response)
                if not retryable_response(response, call):
                    raise error
                pause = self._retry.pause_s(attempt, retry_after_s(response))
                if time.monotonic() - started + pause > self._retry.retry_s:
                    raise error
                log.warning(
                    "%s %s: HTTP %d (%s); trying again in %.1f s",
                    call.method,
                    logged_path(call.path),
                    response.status_code,
                    type(error).__name__,
                    pause,
                )
            await asyncio.sleep(pause)
            attempt += 1

    # ----- erasures ------------------------------------------------------------------------------
    async def submit(
        self,
        subject_ids: Sequence[str | int],
        *,
        idempotency_key: str | None = None,
        ticket: str | None = None,
        reason: str | None = None,
        received_at: str | dt.datetime | None = None,
    ) -> ErasureAccepted:
        """Journal an erasure of ``subject_ids`` and return at once (202), before any retrain.

        ``idempotency_key``: the same key always names the same request (a resubmission returns
        it and changes nothing); made up here when omitted, before the first attempt, so this
        call's own retries are safe. ``ticket``: your reference (a case number; findable with
        ``status``). ``reason``: free text. Neither may hold an id, e-mail address or phone
        number. ``received_at``: when you received the request (ISO 8601 text or an aware
        datetime; default now), which starts the one-month GDPR clock.

        Raises:
            ConfigError: ``subject_ids`` is not a non-empty list or tuple; a field the wire format refuses.
            InvalidSubjectIdError: an id that is not a str or int (here), or that the identity rule refuses (server).
            IdempotencyConflictError: the key already names a request for other subjects.
            AuthenticationError, PermissionDeniedError: no valid token, or one without ``erasure:submit``.
            ServiceUnavailableError: the service stayed unreachable for ``retry_s``.
        """
        call = _calls.submit(subject_ids, idempotency_key, ticket, reason, received_at)
        return ErasureAccepted.model_validate(await self._send(call))

    async def forget(
        self,
        subject_ids: Sequence[str | int],
        *,
        idempotency_key: str | None = None,
        ticket: str | None = None,
        reason: str | None = None,
        received_at: str | dt.datetime | None = None,
        timeout: float | None = None,
    ) -> Erasure:
        """Erase the subjects: ``submit``, then ``wait`` until committed (served without them); the ``Erasure``.

        ``timeout``: seconds to wait for the commit (None: no limit). The MLflow registration
        and the purge of earlier versions follow: ``wait(request_id, stage="done")``.

        Raises:
            ErasureWaitTimeout: not committed within ``timeout`` (the request goes on).
            ExpungeError: the request failed (nothing was erased by it). See also ``submit``.
        """
        accepted = await self.submit(
            subject_ids, idempotency_key=idempotency_key, ticket=ticket, reason=reason, received_at=received_at
        )
        return await self.wait(accepted.request_id, stage="committed", timeout=timeout)

    async def status(self, ref: str | ErasureAccepted) -> Erasure:
        """Where one request stands; ``ref``: its request id, its idempotency key or its ticket.

        Raises:
            UnknownRequestError: no request has that id, key or ticket.
        """
        return Erasure.model_validate(await self._send(_calls.status(ref)))

    async def wait(
        self,
        ref: str | ErasureAccepted,
        stage: WaitStage = "committed",
        timeout: float | None = None,
        poll_s: float = 1.0,
    ) -> Erasure:
        """Block until the request reaches ``stage``; the ``Erasure``.

        Calls ``status`` at once, after 0.1 s, then at doubling intervals up to ``poll_s`` seconds.

        ``committed``: the store commit is published and served (the person is gone from every
        answer). ``done``: also registered in MLflow with every earlier version purged and
        nothing pending. ``timeout``: seconds (None: no limit; 0: look once).

        Raises:
            ErasureWaitTimeout: ``timeout`` passed first (the request goes on).
            ExpungeError: the request failed; the message says why (nothing was erased by it).
            UnknownRequestError: no such request.
        """
        stage = check_stage(stage)
        limit = check_timeout(timeout)
        longest = check_poll_s(poll_s)
        pause = min(0.1, longest)  # a commit often takes a second or two: look early, then less often
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            erasure = await self.status(ref)
            if erasure.stage == "failed":
                raise failed_error(erasure)
            if reached(erasure, stage):
                return erasure
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise wait_timeout_error(erasure, stage, limit or 0.0)
                await asyncio.sleep(min(pause, left))
            else:
                await asyncio.sleep(pause)
            pause = min(pause * 2, longest)

    async def extend(self, ref: str, months: int, reason: str) -> Erasure:
        """Extend the request's deadline by ``months`` (1 or 2; GDPR Art. 12(3)) with the reason told to the person.

        Raises:
            ConfigError: months not 1 or 2, no reason, or an extension the server refuses.
            UnknownRequestError: no such request.
        """
        return Erasure.model_validate(await self._send(_calls.extend(ref, months, reason)))

    async def evidence(self, ref: str) -> dict[str, Any]:
        """The request's evidence report (issue 15's verification report) as a JSON object.

        Raises:
            UnknownRequestError: no such request, or no report for it yet.
            PermissionDeniedError: the token lacks ``evidence:read``.
        """
        report: dict[str, Any] = await self._send(_calls.evidence(ref))
        return report

    # ----- serving -------------------------------------------------------------------------------
    async def recommend(self, subject_id: str | int, k: int = 10) -> builtins.list[int]:
        """The ``k`` item ids (1 to 1000) the subject has not rated that the exact ensemble ranks best, best first.

        Raises:
            UnknownSubjectError: the served version holds no rows of the subject (never seen, or erased).
            InvalidSubjectIdError: the id is not a str or int.
        """
        return Recommendations.model_validate(await self._send(_calls.recommend(subject_id, k))).items

    async def predict(self, rows: Sequence[Mapping[str, Any]]) -> builtins.list[float]:
        """One prediction per row, in order, for rows with ``subject_id`` and ``item_id`` (ratings models).

        Subjects the model does not hold (erased ones included) get the population's prediction.

        Raises:
            ConfigError: no rows, or a column the model needs is missing.
        """
        return Predictions.model_validate(await self._send(_calls.predict(rows))).predictions

    # ----- ingest --------------------------------------------------------------------------------
    async def ingest(self, rows: object, *, request_id: str | None = None, timeout: float | None = 600.0) -> Ingestion:
        """``Client.ingest``: add new rows to the served model; the ``Ingestion`` once they are served."""
        call = _calls.ingest(rows, request_id)
        return Ingestion.model_validate(await self._send(call, timeout=httpx.Timeout(check_timeout(timeout))))

    # ----- administration ------------------------------------------------------------------------
    async def readmit(self, subject_ids: Sequence[str | int], reason: str) -> int:
        """Let erased subjects who gave new consent be trained on again (scope ``admin``); how many were re-admitted.

        Raises:
            ConfigError: no reason, or no ids. PermissionDeniedError: the token lacks ``admin``.
        """
        return Readmitted.model_validate(await self._send(_calls.readmit(subject_ids, reason))).readmitted

    async def health(self) -> Health:
        """Whether the service answers, what it serves and its queue (no token needed)."""
        return Health.model_validate(await self._send(_calls.health()))

    async def tokens(self) -> builtins.list[TokenInfo]:
        """Every token (scope ``admin``), without secrets."""
        return [TokenInfo.model_validate(item) for item in await self._send(_calls.tokens())]

    async def create_token(self, name: str, scopes: Sequence[Scope]) -> TokenCreated:
        """A new token (scope ``admin``): its secret ``token`` is shown this once."""
        return TokenCreated.model_validate(await self._send(_calls.create_token(name, scopes)))

    async def revoke_token(self, token_id: str) -> TokenInfo:
        """Revoke a token (scope ``admin``); calls with it get 401 from now on."""
        return TokenInfo.model_validate(await self._send(_calls.revoke_token(token_id)))

    # Last: a method named ``list`` would shadow the builtin in the annotations below it.
    async def list(
        self,
        state: ListState | None = None,
        due_before: str | dt.datetime | None = None,
        ticket: str | None = None,
    ) -> ErasureList:
        """Requests, oldest received first: by ``state`` (pending, late, done, failed), due before a time, or ticket.

        Raises:
            ConfigError: an unknown state, or a ``due_before`` datetime without a timezone.
        """
        return ErasureList.model_validate(await self._send(_calls.list_erasures(state, due_before, ticket)))
