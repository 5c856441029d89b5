"""The ``/v1`` routes as ``Call`` objects: one builder per client method, shared by the sync and async clients.

Each builder checks its arguments lightly (the server applies the full rules) and builds the
body from the wire models of ``expunge.client.models``, so a body the server would refuse for
its shape fails here, before any request.
"""

from __future__ import annotations

import datetime as dt
import math
import sys
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from expunge.client._transport import Call, check_subject_ids, iso_time, new_idempotency_key, quoted
from expunge.client.models import (
    MAX_INGEST_ROWS,
    ErasureRequest,
    IngestRequest,
    ListState,
    PredictRequest,
    ReadmitRequest,
    RecommendRequest,
    Scope,
    TokenCreate,
)
from expunge.orchestrator.errors import ConfigError, DataValidationError

__all__ = [
    "create_token",
    "evidence",
    "extend",
    "health",
    "ingest",
    "list_erasures",
    "predict",
    "readmit",
    "recommend",
    "revoke_token",
    "status",
    "submit",
    "tokens",
]

_STATES = ("pending", "late", "done", "failed")

_Body = TypeVar("_Body", bound=BaseModel)


def _body(model: type[_Body], **fields: Any) -> dict[str, Any]:
    """``model``'s JSON body from ``fields``.

    Raises:
        ConfigError: a field the wire format refuses (listed by name, never by value: it may be an id).
    """
    try:
        return model(**fields).model_dump(exclude_none=True)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        raise ConfigError(f"{model.__name__} refused: {problems}") from None


def submit(
    subject_ids: Sequence[object],
    idempotency_key: str | None,
    ticket: str | None,
    reason: str | None,
    received_at: str | dt.datetime | None,
) -> Call:
    """``POST /v1/erasures``; the key is made up here when none is given, so every retry sends the same one."""
    key = idempotency_key if idempotency_key is not None else new_idempotency_key()
    body = _body(
        ErasureRequest,
        subject_ids=check_subject_ids(subject_ids),
        idempotency_key=key,
        ticket=ticket,
        reason=reason,
        received_at=iso_time(received_at, "received_at"),
    )
    return Call("POST", "/erasures", body=body, key=key)


def status(ref: object) -> Call:
    """``GET /v1/erasures/{ref}``."""
    return Call("GET", f"/erasures/{quoted(ref)}")


def evidence(ref: str) -> Call:
    """``GET /v1/erasures/{ref}/evidence``."""
    return Call("GET", f"/erasures/{quoted(ref)}/evidence")


def list_erasures(state: ListState | None, due_before: str | dt.datetime | None, ticket: str | None) -> Call:
    """``GET /v1/erasures?state=&due_before=&ticket=``.

    Raises:
        ConfigError: a state other than pending, late, done or failed; a naive ``due_before``.
    """
    if state is not None and state not in _STATES:
        raise ConfigError(f"state {state!r}: list 'pending', 'late', 'done' or 'failed' (or None for all)")
    params = {"state": state, "due_before": iso_time(due_before, "due_before"), "ticket": ticket}
    return Call("GET", "/erasures", params={k: v for k, v in params.items() if v is not None})


def extend(ref: str, months: int, reason: str) -> Call:
    """``POST /v1/erasures/{ref}/extension``; not idempotent (sent again only when it surely did not arrive).

    Raises:
        ConfigError: ``months`` not 1 or 2 (GDPR Art. 12(3): up to two further months), or no reason.
    """
    if isinstance(months, bool) or months not in (1, 2):
        raise ConfigError(f"months {months!r}: extend by 1 or 2 months (GDPR Art. 12(3) allows two at most)")
    if not isinstance(reason, str) or not reason.strip():
        raise ConfigError("reason is empty: an extension must say why (the data subject is told)")
    return Call(
        "POST", f"/erasures/{quoted(ref)}/extension", body={"months": months, "reason": reason}, idempotent=False
    )


def recommend(subject_id: str | int, k: int) -> Call:
    """``POST /v1/recommendations``.

    Raises:
        InvalidSubjectIdError: the id is not a str or int (or is a bool).
    """
    (checked,) = check_subject_ids([subject_id])
    return Call("POST", "/recommendations", body=_body(RecommendRequest, subject_id=checked, k=k))


def predict(rows: Sequence[Mapping[str, Any]]) -> Call:
    """``POST /v1/predictions``.

    Raises:
        ConfigError: ``rows`` is not a list or tuple of mappings, or is empty.
    """
    if not isinstance(rows, list | tuple) or not rows or not all(isinstance(r, Mapping) for r in rows):
        raise ConfigError('rows must be a non-empty list of dicts, e.g. [{"subject_id": "user-7", "item_id": 12}]')
    return Call("POST", "/predictions", body=_body(PredictRequest, rows=[dict(r) for r in rows]))


def ingest(rows: object, request_id: str | None) -> Call:
    """``POST /v1/ingestions``; a request id is made up here when none is given, so a retry returns the first answer.

    ``rows``: a pyarrow Table (pyarrow is never imported here: a caller who has a Table has it
    loaded), or a mapping of column name to values (lists; numpy arrays and pandas Series are listed).

    Raises:
        ConfigError: neither; a column that is not a sequence of values; more than ``MAX_INGEST_ROWS`` rows.
        DataValidationError: NaN or infinite values (JSON has no such numbers).
    """
    columns = _columns(rows)
    longest = max((len(values) for values in columns.values()), default=0)
    if longest > MAX_INGEST_ROWS:
        raise ConfigError(
            f"the batch has {longest} rows, over the {MAX_INGEST_ROWS} one call takes: send it in parts (a part sent "
            "twice adds nothing: rows are matched by record id)"
        )
    not_finite = {name: n for name, values in columns.items() if (n := _not_finite(values))}
    if not_finite:
        raise DataValidationError(
            "the rows",
            [f"{n} {name} value(s) are NaN or infinite, which JSON cannot carry" for name, n in not_finite.items()],
        )
    named = request_id if request_id is not None else f"ingest-{uuid.uuid4().hex[:24]}"
    return Call("POST", "/ingestions", body=_body(IngestRequest, rows=columns, request_id=named), key=named)


def _columns(rows: object) -> dict[str, list[Any]]:
    arrow = sys.modules.get("pyarrow")
    if arrow is not None and isinstance(rows, arrow.Table):
        table: dict[str, list[Any]] = rows.to_pydict()
        return table
    if not isinstance(rows, Mapping) or not rows:
        raise ConfigError(
            'rows must be a pyarrow Table or a mapping of columns, e.g. {"record_id": ["r1"], "subject_id": '
            '["user-7"], "item_id": [3], "rating": [4.0]}'
        )
    columns: dict[str, list[Any]] = {}
    for name, values in rows.items():
        if not isinstance(name, str) or isinstance(values, str | bytes | Mapping) or not hasattr(values, "__len__"):
            raise ConfigError(f"column {str(name)[:40]!r}: give a list of values, one per row")
        columns[name] = values.tolist() if hasattr(values, "tolist") else list(values)
    return columns


def _not_finite(values: list[Any]) -> int:
    """How many floats (in a list of values, or of lists of values: features) are NaN or infinite."""
    flat = (v for value in values for v in (value if isinstance(value, list) else (value,)))
    return sum(1 for v in flat if isinstance(v, float) and not math.isfinite(v))


def readmit(subject_ids: Sequence[object], reason: str) -> Call:
    """``POST /v1/readmissions``; not idempotent (sent again only when it surely did not arrive).

    Raises:
        ConfigError: no reason; see ``check_subject_ids`` for the ids.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise ConfigError("reason is empty: a readmission must say why (e.g. the new consent's reference)")
    body = _body(ReadmitRequest, subject_ids=check_subject_ids(subject_ids), reason=reason)
    return Call("POST", "/readmissions", body=body, idempotent=False)


def health() -> Call:
    """``GET /v1/healthz`` (no token needed)."""
    return Call("GET", "/healthz")


def tokens() -> Call:
    """``GET /v1/tokens``."""
    return Call("GET", "/tokens")


def create_token(name: str, scopes: Sequence[Scope]) -> Call:
    """``POST /v1/tokens``; not idempotent (a second token would be made)."""
    return Call("POST", "/tokens", body=_body(TokenCreate, name=name, scopes=list(scopes)), idempotent=False)


def revoke_token(token_id: str) -> Call:
    """``DELETE /v1/tokens/{token_id}``."""
    return Call("DELETE", f"/tokens/{quoted(token_id)}")
