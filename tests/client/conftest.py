"""A small FastAPI app that keeps the ``/v1`` contract, served by a real uvicorn on 127.0.0.1 for the client tests.

It is not the service: requests live in a dict and advance one stage per status call
(accepted, committed, registered with a step pending, done), so ``wait`` has something to poll.
Subjects steer it: ``"bad"`` is refused (400), ``"fail-me"`` fails, ``"stuck"`` never leaves
accepted, and ``recommend("nobody")`` is an unknown subject (404). ``Fake.inject`` queues
failures that the next calls get before any route runs.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from expunge.client.models import (
    Erasure,
    ErasureAccepted,
    ErasureList,
    ErasureRequest,
    Health,
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

SUBMIT = "submit-token"  # erasure:submit, erasure:read, evidence:read, recommend
READ = "read-token"  # erasure:read only
ADMIN = "admin-token"  # admin only
_SCOPES = {
    SUBMIT: {"erasure:submit", "erasure:read", "evidence:read", "recommend"},
    READ: {"erasure:read"},
    ADMIN: {"admin"},
}
_NOW = "2026-12-04T10:00:00+00:00"


@dataclass
class Injected:
    """A failure the next call gets: a problem (``code``) or, without one, a plain-text body (a proxy's)."""

    status: int
    code: str | None = None
    retry_after: str | None = None


class _Refused(Exception):
    def __init__(self, status: int, code: str | None, detail: str, retry_after: str | None = None) -> None:
        self.status, self.code, self.detail, self.retry_after = status, code, detail, retry_after


@dataclass
class Fake:
    """The app's state; tests read what it saw and queue failures."""

    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, Any, dict[str, str]]] = field(default_factory=list)  # method, path, body, query
    injected: list[Injected] = field(default_factory=list)
    tokens: dict[str, TokenInfo] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.calls.clear()
            self.injected.clear()
            self.tokens.clear()

    def inject(self, *failures: Injected) -> None:
        with self.lock:
            self.injected.extend(failures)

    def bodies(self, method: str, path: str) -> list[Any]:
        return [body for m, p, body, _ in self.calls if (m, p) == (method, path)]

    def find(self, ref: str) -> dict[str, Any]:
        for record in self.requests.values():
            if ref in (record["request_id"], record["key"], record["ticket"]):
                return record
        raise _Refused(404, "UnknownRequestError", f"no erasure request {ref!r} in this service's journal")


def _erasure(record: dict[str, Any]) -> Erasure:
    polls, ids = record["polls"], record["subject_ids"]
    fields: dict[str, Any] = {
        "request_id": record["request_id"],
        "ticket": record["ticket"],
        "received_at": record["received_at"],
        "due_at": "2027-01-04T10:00:00+00:00",
        "extension": record.get("extension"),
        "subject_digests": [f"digest-{i}" for i in range(len(ids))],
    }
    if "fail-me" in ids and polls >= 1:
        return Erasure(**fields, state="failed", stage="failed", error="ShardRetrainFailed: shard 2 diverged")
    if "stuck" in ids or polls == 0:
        return Erasure(**fields, state="accepted", stage="accepted")
    fields |= {"committed_at": _NOW, "rows_removed": 3 * len(ids), "shards_retrained": [0, 2], "model_version": 2}
    if polls == 1:
        return Erasure(**fields, state="committed", stage="committed")
    fields |= {"registered_at": _NOW, "registry_version": "7"}
    if polls == 2:
        pending = ["purge of earlier versions: S3 unavailable"]
        return Erasure(
            **fields, state="purge of earlier versions pending (retrying: S3)", stage="registered", pending=pending
        )
    return Erasure(**fields, state="done", stage="registered", done_at=_NOW, evidence_url="/v1/erasures/x/evidence")


def build_app(fake: Fake) -> FastAPI:
    async def gate(request: Request) -> None:
        body = await request.json() if await request.body() else None
        with fake.lock:
            fake.calls.append((request.method, request.url.path, body, dict(request.query_params)))
            failure = fake.injected.pop(0) if fake.injected else None
        if failure is not None:
            raise _Refused(failure.status, failure.code, f"injected {failure.status}", failure.retry_after)

    def scope(needed: str | None) -> Any:
        def check(request: Request) -> None:
            if needed is None:
                return
            header = request.headers.get("authorization", "")
            token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
            if token not in _SCOPES:
                raise _Refused(401, "AuthenticationError", "no bearer token, or one this service does not know")
            if needed not in _SCOPES[token]:
                raise _Refused(403, "PermissionDeniedError", f"this token lacks the scope {needed!r}")

        return Depends(check)

    app = FastAPI(dependencies=[Depends(gate)])

    @app.exception_handler(_Refused)
    async def refused(request: Request, exc: _Refused) -> Response:
        headers = {"Retry-After": exc.retry_after} if exc.retry_after is not None else None
        if exc.code is None:
            return PlainTextResponse("<html>bad gateway</html>", status_code=exc.status, headers=headers)
        problem = Problem(title="refused", status=exc.status, detail=exc.detail, code=exc.code)
        return JSONResponse(
            problem.model_dump(), status_code=exc.status, headers=headers, media_type="application/problem+json"
        )

    @app.post("/v1/erasures", status_code=202, dependencies=[scope("erasure:submit")])
    def submit(body: ErasureRequest) -> ErasureAccepted:
        if "bad" in body.subject_ids:
            position = body.subject_ids.index("bad")
            raise _Refused(
                400,
                "InvalidSubjectIdError",
                f"1 problem(s) in subject_ids; nothing was changed:\n  - position {position}: not an id here",
            )
        with fake.lock:
            for record in fake.requests.values():
                if record["key"] == body.idempotency_key:
                    if record["subject_ids"] != body.subject_ids:
                        raise _Refused(409, "IdempotencyConflictError", "this key names a request for other subjects")
                    break
            else:
                request_id = f"req-{len(fake.requests) + 1}"
                record = {
                    "request_id": request_id,
                    "key": body.idempotency_key,
                    "ticket": body.ticket,
                    "subject_ids": body.subject_ids,
                    "received_at": body.received_at or _NOW,
                    "polls": 0,
                }
                fake.requests[request_id] = record
        return ErasureAccepted(
            request_id=record["request_id"], status_url=f"/v1/erasures/{record['request_id']}", state="accepted"
        )

    @app.get("/v1/erasures", dependencies=[scope("erasure:read")])
    def listing(state: str | None = None, due_before: str | None = None, ticket: str | None = None) -> ErasureList:
        items = [_erasure(r) for r in fake.requests.values() if ticket is None or r["ticket"] == ticket]
        if state == "done":
            items = [e for e in items if e.state == "done"]
        return ErasureList(items=items, count=len(items))

    # ``{ref:path}``: a ticket may hold a slash (sent as %2F, which Starlette decodes before routing);
    # the routes with a suffix come first, or the bare one would take them.
    @app.get("/v1/erasures/{ref:path}/evidence", dependencies=[scope("evidence:read")])
    def evidence(ref: str) -> dict[str, Any]:
        record = fake.find(ref)
        return {"request_id": record["request_id"], "passed": True, "checks": {"rederivation": "exact"}}

    @app.post("/v1/erasures/{ref:path}/extension", dependencies=[scope("erasure:submit")])
    def extend(ref: str, body: dict[str, Any]) -> Erasure:
        with fake.lock:
            record = fake.find(ref)
            record["extension"] = {"months": body["months"], "reason": body["reason"], "extended_at": _NOW}
            return _erasure(record)

    @app.get("/v1/erasures/{ref:path}", dependencies=[scope("erasure:read")])
    def status(ref: str) -> Erasure:
        with fake.lock:
            record = fake.find(ref)
            erasure = _erasure(record)
            record["polls"] += 1
        return erasure

    @app.post("/v1/recommendations", dependencies=[scope("recommend")])
    def recommend(body: RecommendRequest) -> Recommendations:
        if body.subject_id == "nobody":
            raise _Refused(404, "UnknownSubjectError", "the served version holds no rows of this subject")
        return Recommendations(items=list(range(body.k)), model_version=2)

    @app.post("/v1/predictions", dependencies=[scope("recommend")])
    def predict(body: PredictRequest) -> Predictions:
        return Predictions(predictions=[3.5] * len(body.rows), model_version=2)

    @app.post("/v1/readmissions", dependencies=[scope("admin")])
    def readmit(body: ReadmitRequest) -> Readmitted:
        return Readmitted(readmitted=len(body.subject_ids))

    @app.get("/v1/healthz")
    def health() -> Health:
        return Health(status="ok", ensemble_version=2, queued=0, pending_purges=0, pending_registrations=0, late=0)

    @app.get("/v1/tokens", dependencies=[scope("admin")])
    def tokens() -> list[TokenInfo]:
        return list(fake.tokens.values())

    @app.post("/v1/tokens", status_code=201, dependencies=[scope("admin")])
    def create_token(body: TokenCreate) -> TokenCreated:
        info = TokenInfo(token_id=f"tok-{len(fake.tokens) + 1}", name=body.name, scopes=body.scopes, created_at=_NOW)
        fake.tokens[info.token_id] = info
        return TokenCreated(**info.model_dump(), token="secret-shown-once")

    @app.delete("/v1/tokens/{token_id}", dependencies=[scope("admin")])
    def revoke_token(token_id: str) -> TokenInfo:
        revoked = fake.tokens[token_id].model_copy(update={"revoked_at": _NOW})
        fake.tokens[token_id] = revoked
        return revoked

    return app


@dataclass
class Served:
    url: str
    fake: Fake


@pytest.fixture(scope="session")
def _server() -> Iterator[Served]:
    fake = Fake()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(build_app(fake), log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
        assert thread.is_alive(), "uvicorn stopped while starting"
        time.sleep(0.01)
    yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}", fake)
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def served(_server: Served) -> Served:
    """The running test app, its state emptied for this test."""
    _server.fake.reset()
    return _server
