"""The HTTP API's wire format (``/v1``): the bodies the service accepts and returns, shared by server and client.

Pure pydantic and the standard library, so the light client imports it without torch, Ray or
pyarrow. Times are UTC, ISO 8601 text (``2026-12-04T15:57:24.123456+00:00``). Subjects travel
only in request bodies (``subject_ids``, ``subject_id``, ``rows``) and never come back: every
response names a request by its id, its ticket and keyed digests at most.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

__all__ = [
    "API_PREFIX",
    "MAX_INGEST_ROWS",
    "SCOPES",
    "Erasure",
    "ErasureAccepted",
    "ErasureList",
    "ErasureRequest",
    "Extension",
    "Health",
    "IngestRequest",
    "Ingestion",
    "ListState",
    "PredictRequest",
    "Predictions",
    "Problem",
    "ReadmitRequest",
    "Readmitted",
    "RecommendRequest",
    "Recommendations",
    "Scope",
    "TokenCreate",
    "TokenCreated",
    "TokenInfo",
]

#: Every route lives under this prefix (``/metrics`` and ``/openapi.json`` excepted).
API_PREFIX = "/v1"

Scope = Literal["erasure:submit", "erasure:read", "evidence:read", "recommend", "ingest", "admin"]
#: The scopes a token can hold. ``admin`` is readmission and token management only: it does not
#: imply the others (deny by default: a token holds exactly the scopes it was created with).
SCOPES: tuple[str, ...] = ("erasure:submit", "erasure:read", "evidence:read", "recommend", "ingest", "admin")

#: Most rows one ``POST /v1/ingestions`` takes: send a larger batch in parts (a part sent twice adds
#: nothing, rows being matched by record id).
MAX_INGEST_ROWS = 100_000

#: ``GET /v1/erasures?state=``: ``pending`` = not done and not failed; ``late`` = pending past its
#: due date (extension included); ``done`` = registered with nothing pending; ``failed``.
ListState = Literal["pending", "late", "done", "failed"]

#: A subject id on the wire: a JSON string or integer (``true`` and ``1.0`` are refused, never coerced;
#: the server applies the identity rule, ``expunge.shards.identity``).
SubjectId = StrictStr | StrictInt


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Reply(BaseModel):
    # Replies ignore fields a newer server adds, so an older client keeps working.
    model_config = ConfigDict(extra="ignore", frozen=True)


class ErasureRequest(_Wire):
    """``POST /v1/erasures`` (scope ``erasure:submit``): erase these subjects.

    ``idempotency_key``: the same key always names the same request (a resubmission returns it,
    changes nothing); made up by the server when omitted. ``ticket``: the caller's reference
    (e.g. the privacy desk's case number), findable later. ``reason``: free text. Neither may
    hold a subject id, an e-mail address or a phone number (refused, 400). ``received_at``: when
    the controller received the request, for backlog imports (default: now); the GDPR clock
    (due one calendar month later) starts there.
    """

    subject_ids: list[SubjectId] = Field(min_length=1)
    idempotency_key: str | None = None
    ticket: str | None = Field(default=None, max_length=200)
    reason: str | None = Field(default=None, max_length=1000)
    received_at: str | None = None


class ErasureAccepted(_Reply):
    """``202 Accepted``: the request is durable in the journal; poll ``status_url``."""

    request_id: str
    status_url: str
    state: str


class Extension(_Reply):
    """An extension of the deadline (GDPR Art. 12(3): by up to two further months, with notice)."""

    months: int
    reason: str
    extended_at: str


class Erasure(_Reply):
    """``GET /v1/erasures/{ref}`` (scope ``erasure:read``): where one request stands.

    ``state``: accepted, committed, "<step> pending (retrying: <cause>)", done or failed.
    ``late``: not done by ``due_at``. ``done_at``: when it was done (registered, nothing
    pending). ``ready_at``: when the model the service answers from reflected it (``item_stats``:
    its exact solve swapped in, the subjects masked until then; MF: at the commit); known to the
    service process that committed it only (None after a restart). ``subject_digests``: keyed
    digests, never the ids. ``batch_id``: the commit this request was coalesced into with others
    that arrived together (its store version, MLflow run and receipt-log entry carry that id);
    None when it committed alone or has not committed.
    """

    request_id: str
    ticket: str | None = None
    state: str
    stage: Literal["accepted", "committed", "registered", "failed"]
    received_at: str
    due_at: str
    extension: Extension | None = None
    late: bool = False
    committed_at: str | None = None
    ready_at: str | None = None
    registered_at: str | None = None
    done_at: str | None = None
    error: str | None = None
    pending: list[str] = []
    subject_digests: list[str] = []
    rows_removed: int | None = None
    shards_retrained: list[int] = []
    model_version: int | None = None
    registry_version: str | None = None
    batch_id: str | None = None
    evidence_url: str | None = None


class ErasureList(_Reply):
    """``GET /v1/erasures``: requests, oldest received first."""

    items: list[Erasure]
    count: int


class RecommendRequest(_Wire):
    """``POST /v1/recommendations`` (scope ``recommend``): the best ``k`` items the subject has not rated."""

    subject_id: SubjectId
    k: StrictInt = Field(default=10, ge=1, le=1000)


class Recommendations(_Reply):
    items: list[int]
    model_version: int


class PredictRequest(_Wire):
    """``POST /v1/predictions`` (scope ``recommend``): rows with ``subject_id`` and ``item_id`` (ratings models)."""

    rows: list[dict[str, Any]] = Field(min_length=1, max_length=100_000)


class Predictions(_Reply):
    """One prediction per row, in order."""

    predictions: list[float]
    model_version: int


class IngestRequest(_Wire):
    """``POST /v1/ingestions`` (scope ``ingest``): new rows, as columns of equal length.

    ``rows``: ``record_id``, ``subject_id`` and the model's targets (``item_id`` and ``rating`` for
    ratings models, ``features`` and ``label`` for classifiers), one list of values per column, at
    most ``MAX_INGEST_ROWS`` rows. ``request_id``: names the ingest in the store and MLflow (1-128
    letters, digits, ``.``, ``_`` or ``-``; never a person's id); the same id with the same rows
    returns the first answer and adds nothing, with other rows it is refused (409).
    """

    rows: dict[str, list[Any]] = Field(min_length=1, max_length=16)
    request_id: str | None = Field(default=None, min_length=1, max_length=128)


class Ingestion(_Reply):
    """What an ingest did: counts, store versions and the batch's keyed digest, never an id of anyone.

    ``status``: ``ingested`` (a new version is served) or ``nothing_new`` (every row was stored
    already or refused). ``rows_refused_erased``: rows of erased people, never stored.
    ``rows_already_stored``: rows whose record id the store holds (a batch sent twice).
    ``shards_retrained``: the shards that got rows, each retrained from its first new slice.
    ``batch_digest``: a keyed digest of the batch's record ids, the same for the same batch.
    MLflow registers the new version shortly after (``GET /v1/healthz``: ``registry_version``).
    """

    request_id: str
    status: Literal["ingested", "nothing_new"]
    batch_digest: str
    rows_in_batch: int
    rows_added: int
    rows_refused_erased: int = 0
    subjects_refused_erased: int = 0
    rows_already_stored: int = 0
    subjects_added: int = 0
    new_subjects: int = 0
    shards_retrained: list[int] = []
    model_version_before: int | None = None
    model_version_after: int | None = None
    committed_at: str | None = None
    seconds: float = 0.0
    retrain_seconds: float = 0.0
    pending: list[str] = []


class ReadmitRequest(_Wire):
    """``POST /v1/readmissions`` (scope ``admin``): people who gave new consent may be trained on again."""

    subject_ids: list[SubjectId] = Field(min_length=1)
    reason: str = Field(min_length=1, max_length=1000, pattern=r"^[^\x00-\x1f\x7f]+$")


class Readmitted(_Reply):
    readmitted: int


class Health(_Reply):
    """``GET /v1/healthz`` (no token): the service answers and what it serves."""

    status: Literal["ok"]
    ensemble_version: int
    registry_version: str | None = None
    queued: int
    pending_purges: int
    pending_registrations: int
    late: int
    #: A batch waits, before its commit, for a store that does not answer or holds a symbolic link
    #: (the cause: ``ServiceStats.waiting_cause`` and the service's log); requests queue behind it.
    waiting_for_store: bool = False


class TokenCreate(_Wire):
    """``POST /v1/tokens`` (scope ``admin``)."""

    name: str = Field(min_length=1, max_length=100)
    scopes: list[Scope] = Field(min_length=1)


class TokenInfo(_Reply):
    """A token as listed: never its secret."""

    token_id: str
    name: str
    scopes: list[str]
    created_at: str
    revoked_at: str | None = None


class TokenCreated(TokenInfo):
    """The new token: ``token`` is shown this once and stored only as a salted hash."""

    token: str


class Problem(_Reply):
    """Every error body (RFC 9457 ``application/problem+json``).

    ``code``: the Expunge error class (``InvalidSubjectIdError``, ``AuthenticationError``, ...),
    which the client raises as that class. A 4xx response changed nothing.
    """

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
