"""The HTTP API's routes (FastAPI), over one in-process ``ErasureService``.

Every route but ``/v1/healthz``, ``/metrics`` and ``/openapi.json`` needs a bearer token with
the route's scope (``expunge.orchestrator.api.tokens``). Errors are RFC 9457 problems
(``expunge.orchestrator.api.problems``); a 4xx changed nothing. Each call is written to the
``expunge.access`` log with the client's name, the route template and the request id, never a
raw path or body (they may hold an idempotency key, a ticket or a subject id).
"""

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import pyarrow as pa
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from expunge import __version__
from expunge.client.models import (
    API_PREFIX,
    MAX_INGEST_ROWS,
    Erasure,
    ErasureAccepted,
    ErasureList,
    ErasureRequest,
    Health,
    Ingestion,
    IngestRequest,
    Predictions,
    PredictRequest,
    Problem,
    ReadmitRequest,
    Readmitted,
    Recommendations,
    RecommendRequest,
    TokenCreate,
    TokenCreated,
    TokenInfo,
)
from expunge.orchestrator.api.evidence import evidence_report
from expunge.orchestrator.api.metrics import HttpMetrics, render
from expunge.orchestrator.api.problems import RETRY_AFTER_S, problem_for
from expunge.orchestrator.api.tokens import TokenRecord, TokenStore, authorize
from expunge.orchestrator.errors import AuthenticationError, ConfigError, ExpungeError
from expunge.orchestrator.service.core import ErasureService
from expunge.orchestrator.service.ingestion import columns_table, ingestion_view

__all__ = ["MAX_BODY_BYTES", "MAX_SMALL_BODY_BYTES", "build_app"]

log = logging.getLogger(__name__)
access = logging.getLogger("expunge.access")

_PROBLEM = {"model": Problem, "content": {"application/problem+json": {}}}
_ERRORS: dict[int | str, dict[str, Any]] = {400: _PROBLEM, 401: _PROBLEM, 403: _PROBLEM, 503: _PROBLEM}
_COUNT_CACHE_S = 5.0
#: Methods counted by name in /metrics; any other word a caller sends is "other" (labels stay bounded).
_METHODS = frozenset({"GET", "POST", "DELETE", "HEAD", "OPTIONS", "PUT", "PATCH"})
#: Largest request body the API reads, in bytes: predictions and ingestions (100,000 rows fit), every other route.
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_SMALL_BODY_BYTES = 1024 * 1024
_LARGE_BODY_PATHS = frozenset({f"{API_PREFIX}/predictions", f"{API_PREFIX}/ingestions"})


class ExtensionRequest(BaseModel):
    """``POST /v1/erasures/{ref}/extension`` (scope ``erasure:submit``): months in all (1 or 2) and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    months: StrictInt = Field(ge=1, le=2)
    reason: str = Field(min_length=1, max_length=1000, pattern=r"^[^\x00-\x1f\x7f]+$")  # one printable line


def _now() -> datetime:
    return datetime.now(UTC)


def _problem_response(problem: Problem) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if problem.status == 503 else {}
    if problem.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="expunge"'
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=problem.status,
        media_type="application/problem+json",
        headers=headers,
    )


def _answering_version(service: ErasureService) -> int:
    """The ensemble version ``recommend`` and ``predict`` answer from: a statistics model's last solve, else the
    version the shard actors serve. In memory: no coordinator lock (a commit under way would hold the answer
    back) and no MLflow call (``model_version()`` also looks the alias up)."""
    served = service.readiness.served()
    return served.version if served is not None else service.coordinator.require_manifest().version


def build_app(service: ErasureService, tokens: TokenStore) -> FastAPI:
    """The FastAPI application serving ``service`` (routes: docs/http-api.md)."""
    app = FastAPI(
        title="Expunge",
        version=__version__,
        description="Exact machine unlearning for the GDPR right to erasure: submit erasures, follow their "
        "GDPR clock, fetch their evidence, and get recommendations from the exact ensemble.",
        docs_url=None,
        redoc_url=None,
    )
    bearer = HTTPBearer(auto_error=False, description="An Expunge API token: `expunge tokens create`.")
    http = HttpMetrics()
    counts: dict[str, Any] = {"at": 0.0, "value": {}}

    # ----- errors and the access log ---------------------------------------------------------------
    @app.exception_handler(ExpungeError)
    async def _expunge_error(request: Request, exc: ExpungeError) -> JSONResponse:
        return _problem_response(problem_for(exc, request.url.path if _safe_path(request) else None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()
        )
        return _problem_response(problem_for(ConfigError(f"the request is invalid: {problems}; nothing was changed")))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _problem_response(
            Problem(title=str(exc.detail), status=exc.status_code, detail=str(exc.detail), code="HTTPError")
        )

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error answering %s %s", request.method, _route(request), exc_info=exc)
        return _problem_response(problem_for(exc))

    @app.middleware("http")
    async def _log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        request.state.client = "-"
        request.state.request_id = "-"
        status = 500
        try:
            refused = await _gate(request, tokens)
            response = _problem_response(refused) if refused is not None else await call_next(request)
            status = response.status_code
            return response
        finally:
            seconds = time.perf_counter() - start
            route = _route(request)
            method = request.method if request.method in _METHODS else "other"
            http.observe(route, method, status, seconds)
            access.info(
                "client=%s %s %s %d %.1fms request=%s",
                request.state.client,
                method,
                route,
                status,
                seconds * 1000,
                request.state.request_id,
            )

    def caller(scope: str) -> Callable[..., TokenRecord]:
        def check(
            request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
        ) -> TokenRecord:
            if credentials is None:
                raise AuthenticationError(
                    "no bearer token: send `Authorization: Bearer <token>`; the operator makes one with "
                    "`expunge tokens create --scope ... --name <client>`"
                )
            record = tokens.authenticate(credentials.credentials)
            request.state.client = record.name
            authorize(record, scope)
            return record

        return check

    Submit = Annotated[TokenRecord, Depends(caller("erasure:submit"))]
    Read = Annotated[TokenRecord, Depends(caller("erasure:read"))]
    Evidence = Annotated[TokenRecord, Depends(caller("evidence:read"))]
    Recommend = Annotated[TokenRecord, Depends(caller("recommend"))]
    Ingest = Annotated[TokenRecord, Depends(caller("ingest"))]
    Admin = Annotated[TokenRecord, Depends(caller("admin"))]

    def _view(request: Request, request_id: str) -> Erasure:
        request.state.request_id = request_id
        view = service.lifecycle.view(request_id, _now())
        evidence = f"{_base(request)}{API_PREFIX}/erasures/{request_id}/evidence" if view.committed_at else None
        return view.model_copy(update={"evidence_url": evidence})

    # ----- erasures --------------------------------------------------------------------------------
    @app.post(
        f"{API_PREFIX}/erasures", status_code=202, response_model=ErasureAccepted, responses=_ERRORS | {409: _PROBLEM}
    )
    def submit_erasure(body: ErasureRequest, request: Request, response: Response, _: Submit) -> ErasureAccepted:
        """Erase the subjects (202: durable in the journal). The same idempotency key returns the same request."""
        request_id = service.submit(body.subject_ids, body.idempotency_key, body.reason, body.ticket, body.received_at)
        request.state.request_id = request_id
        url = f"{_base(request)}{API_PREFIX}/erasures/{request_id}"
        response.headers["Location"] = url
        return ErasureAccepted(request_id=request_id, status_url=url, state=service.status(request_id).state)

    @app.get(f"{API_PREFIX}/erasures", response_model=ErasureList, responses=_ERRORS)
    def list_erasures(
        request: Request,
        _: Read,
        state: Annotated[str | None, Query(description="pending, late, done or failed")] = None,
        due_before: Annotated[str | None, Query(description="ISO 8601 date or time")] = None,
        ticket: Annotated[str | None, Query(max_length=200)] = None,
    ) -> ErasureList:
        """Requests, oldest received first, filtered by state, due date and ticket."""
        items = service.lifecycle.list(_now(), state, due_before, ticket)
        return ErasureList(items=items, count=len(items))

    @app.post(
        f"{API_PREFIX}/erasures/{{ref:path}}/extension", response_model=Erasure, responses=_ERRORS | {404: _PROBLEM}
    )
    def extend_erasure(ref: str, body: ExtensionRequest, request: Request, _: Submit) -> Erasure:
        """Extend the deadline by 1 or 2 further months in all (GDPR Art. 12(3)), within the first month."""
        view = service.lifecycle.extend(ref, body.months, body.reason, _now())
        return _view(request, view.request_id)

    @app.get(f"{API_PREFIX}/erasures/{{ref:path}}/evidence", responses=_ERRORS | {404: _PROBLEM})
    def get_evidence(ref: str, request: Request, _: Evidence) -> dict[str, Any]:
        """The verify report of a committed request (computed once, then kept in the journal)."""
        request_id = service.lifecycle.find(ref)
        request.state.request_id = request_id
        return evidence_report(service, request_id)

    @app.get(f"{API_PREFIX}/erasures/{{ref:path}}", response_model=Erasure, responses=_ERRORS | {404: _PROBLEM})
    def get_erasure(ref: str, request: Request, _: Read) -> Erasure:
        """One request, by request id, idempotency key or ticket (tried in that order)."""
        return _view(request, service.lifecycle.find(ref))

    # ----- serving ---------------------------------------------------------------------------------
    @app.post(f"{API_PREFIX}/recommendations", response_model=Recommendations, responses=_ERRORS | {404: _PROBLEM})
    def recommend(body: RecommendRequest, _: Recommend) -> Recommendations:
        """The ``k`` best items the subject has not rated, best first, from the exact ensemble."""
        items = service.recommend(body.subject_id, body.k)
        return Recommendations(items=items, model_version=_answering_version(service))

    @app.post(f"{API_PREFIX}/predictions", response_model=Predictions, responses=_ERRORS)
    def predict(body: PredictRequest, _: Recommend) -> Predictions:
        """One prediction per row (``subject_id``, ``item_id``), in order."""
        try:
            table = pa.Table.from_pylist(body.rows)
        except (pa.ArrowException, OverflowError, UnicodeError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"rows: {type(exc).__name__}; give objects with the same fields (subject_id as text or an integer, "
                "item_id as an integer)"
            ) from None
        values = service.predict(table)
        return Predictions(
            predictions=[float(v) for v in values.reshape(len(body.rows), -1)[:, 0]],
            model_version=_answering_version(service),
        )

    # ----- ingest ----------------------------------------------------------------------------------
    @app.post(
        f"{API_PREFIX}/ingestions",
        response_model=Ingestion,
        responses=_ERRORS | {409: _PROBLEM, 413: _PROBLEM, 422: _PROBLEM},
    )
    def ingest(body: IngestRequest, request: Request, _: Ingest) -> Ingestion | JSONResponse:
        """Add rows (columns of equal length); only the shards that get rows retrain. 200 once served."""
        rows = max(len(values) for values in body.rows.values())
        if rows > MAX_INGEST_ROWS:
            return _problem_response(
                Problem(
                    title="Content Too Large",
                    status=413,
                    detail=f"the batch has {rows} rows, over the {MAX_INGEST_ROWS} one call takes: send it in parts "
                    "(a part sent twice adds nothing: rows are matched by record id); nothing was changed",
                    code="ConfigError",
                )
            )
        receipt = service.ingest(columns_table(body.rows), body.request_id)
        request.state.request_id = receipt.request_id
        return ingestion_view(receipt)

    # ----- administration --------------------------------------------------------------------------
    @app.post(f"{API_PREFIX}/readmissions", response_model=Readmitted, responses=_ERRORS)
    def readmit(body: ReadmitRequest, _: Admin) -> Readmitted:
        """Lift the tombstones of people who gave new consent (their rows are not restored)."""
        return Readmitted(readmitted=service.readmit(body.subject_ids, body.reason))

    @app.get(f"{API_PREFIX}/tokens", response_model=list[TokenInfo], responses=_ERRORS)
    def list_tokens(_: Admin) -> list[TokenInfo]:
        """Every token (never a secret), revoked ones included."""
        return [TokenInfo(**r.model_dump(exclude={"salt", "digest"})) for r in tokens.list()]

    @app.post(f"{API_PREFIX}/tokens", status_code=201, response_model=TokenCreated, responses=_ERRORS)
    def create_token(body: TokenCreate, _: Admin) -> TokenCreated:
        """A new token; its secret is in this answer only."""
        record, token = tokens.create(body.name, body.scopes)
        return TokenCreated(**record.model_dump(exclude={"salt", "digest"}), token=token)

    @app.delete(f"{API_PREFIX}/tokens/{{token_id}}", response_model=TokenInfo, responses=_ERRORS)
    def revoke_token(token_id: str, _: Admin) -> TokenInfo:
        """Revoke a token at once."""
        return TokenInfo(**tokens.revoke(token_id).model_dump(exclude={"salt", "digest"}))

    # ----- open ------------------------------------------------------------------------------------
    def by_state() -> dict[str, int]:
        if time.monotonic() - counts["at"] > _COUNT_CACHE_S:
            views = service.lifecycle.list(_now())
            done = sum(v.state == "done" for v in views)
            failed = sum(v.stage == "failed" for v in views)
            late = sum(v.late and v.state != "done" and v.stage != "failed" for v in views)
            counts["value"] = {"pending": len(views) - done - failed, "late": late, "done": done, "failed": failed}
            counts["at"] = time.monotonic()
        value: dict[str, int] = counts["value"]
        return value

    @app.get(f"{API_PREFIX}/healthz", response_model=Health)
    def healthz() -> Health:
        """The service answers (no token): what it serves and its backlog."""
        stats, served = service.stats(), service.model_version()
        return Health(
            status="ok",
            ensemble_version=served.ensemble_version,
            registry_version=served.registry_version,
            queued=stats.queued,
            pending_purges=stats.pending_purges,
            pending_registrations=stats.pending_registrations,
            late=by_state()["late"],
            waiting_for_store=stats.waiting_cause is not None,
        )

    @app.get("/metrics", response_class=PlainTextResponse, include_in_schema=False)
    def metrics() -> PlainTextResponse:
        """Prometheus text format (no token; no ids of any kind)."""
        return PlainTextResponse(render(service.stats(), by_state(), http), media_type="text/plain; version=0.0.4")

    return app


async def _gate(request: Request, tokens: TokenStore) -> Problem | None:
    """Before anything of the body is read: a route that needs a token gets a known one, and a body its size.

    Scopes are checked later, per route; this keeps callers without a valid token from making the
    server read and parse a body at all.
    """
    path = request.url.path
    if path.startswith(f"{API_PREFIX}/") and path != f"{API_PREFIX}/healthz":
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            if scheme.lower() != "bearer" or not token:
                raise AuthenticationError(
                    "no bearer token: send `Authorization: Bearer <token>`; the operator makes one with "
                    "`expunge tokens create --scope ... --name <client>`"
                )
            record = await run_in_threadpool(tokens.authenticate, token)
        except ExpungeError as exc:
            return problem_for(exc)
        request.state.client = record.name
    return _body_refusal(request)


def _body_refusal(request: Request) -> Problem | None:
    """A body too large, or of unknown length, is refused before it is read (it could be any size)."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return None
    limit = MAX_BODY_BYTES if request.url.path in _LARGE_BODY_PATHS else MAX_SMALL_BODY_BYTES
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        return Problem(
            title="Length Required",
            status=411,
            detail="send the body with a Content-Length (chunked bodies are not accepted); nothing was changed",
            code="ConfigError",
        )
    if int(length) > limit:
        return Problem(
            title="Content Too Large",
            status=413,
            detail=f"the body has {length} bytes, over this route's {limit}: send fewer rows or subjects per "
            "call; nothing was changed",
            code="ConfigError",
        )
    return None


def _base(request: Request) -> str:
    """The server's own URL (set once it listens), never one built from the caller's Host header."""
    base = getattr(request.app.state, "base_url", "")
    return str(base).rstrip("/")


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return str(getattr(route, "path_format", "(unrouted)"))


def _safe_path(request: Request) -> bool:
    """A path may be echoed in a problem only when it holds no caller-chosen reference."""
    return "{" not in _route(request)  # a path parameter is the caller's text: a ref, a key, a token pasted
