"""New rows through the service: checked on the caller's thread, added on the writer's, served at once, then registered.

An ingest runs on the service's worker thread, one step among its erasure commits and
registrations: the store's one writer never does two things at once. It waits for every erasure
accepted before it (first come, first served), so a person whose erasure was acknowledged first
has their rows refused, not added and then erased. Once the store commit is published the live
shard actors serve it; MLflow gets the new version at the service's next registration step, as
for an erasure (``Coordinator.forget_digests(register=False)``), never while callers wait.

When an erasure batch commits while an ingest waits, the ingest joins that commit
(``take``/``prepare``/``joined``, ``Eraser.forget_digests(ingest=)``): each shard retrains once
for both, and the batch's rows of the subjects being erased are refused.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping

import pyarrow as pa

from expunge.client.models import Ingestion
from expunge.orchestrator.config import JobConfig
from expunge.orchestrator.errors import (
    ConfigError,
    DataValidationError,
    IdempotencyConflictError,
    ServiceUnavailableError,
    StoreBusyError,
)
from expunge.orchestrator.ingest import Ingester, PreparedIngest
from expunge.orchestrator.ingest.batch import prepare_batch
from expunge.orchestrator.receipts import ErasureReceipt, IngestReceipt
from expunge.orchestrator.request_ids import check_request_id
from expunge.orchestrator.screening import screen_free_text
from expunge.orchestrator.service.followup import Committed, FollowUp
from expunge.orchestrator.service.readiness import Readiness
from expunge.orchestrator.service.recovery import serve_purpose
from expunge.shards.models import task_of
from expunge.shards.rows import FEATURES, ITEM_ID, LABEL, RATING, RECORD_ID, SUBJECT_ID, validate_rows

__all__ = ["ServiceIngestion", "columns_table", "ingest_due", "ingestion_view"]

log = logging.getLogger(__name__)

#: How an ingest's rows are named in errors.
SOURCE = "the ingest's rows"
#: The columns an ingest takes, by the store model's task: any other column would be stored with the rows.
_TASK_COLUMNS = {"rating": (ITEM_ID, RATING), "classification": (FEATURES, LABEL)}


def ingest_due(oldest_ingest_since: float | None, oldest_erasure_since: float | None, register_overdue: bool) -> bool:
    """Whether the worker runs the oldest waiting ingest now (pure; times are monotonic seconds).

    First come, first served: an erasure accepted before the ingest is committed first. A
    registration past ``service.register_within_s`` goes first too, as it does before erasures.
    """
    if oldest_ingest_since is None or register_overdue:
        return False
    return oldest_erasure_since is None or oldest_erasure_since > oldest_ingest_since


def columns_table(columns: object) -> pa.Table:
    """The rows of columns of equal length (``{"record_id": [...], "subject_id": [...], ...}``), typed by their values.

    Nothing is coerced: ``true`` stays a boolean and ``1.0`` a float, for the row check to refuse.
    One exception, as for erasure requests: ids (``record_id``, ``subject_id``) that mix text and
    integers are text, an integer being its decimal digits.

    Raises:
        DataValidationError: every problem at once: not a mapping of columns, a column that is not
            a list, columns of different lengths, a column whose values mix types. Named by
            column, never by value: a column may hold subject ids.
    """
    if not isinstance(columns, Mapping) or not columns:
        example = '{"record_id": ["r1"], "subject_id": ["user-7"], "item_id": [3], "rating": [4.0]}'
        raise DataValidationError(SOURCE, [f"give the rows as columns, e.g. {example}"])
    problems: list[str] = []
    arrays: dict[str, pa.Array] = {}
    for name, values in columns.items():
        label = repr(str(name)[:40])
        if not isinstance(name, str) or isinstance(values, str | bytes | Mapping) or not hasattr(values, "__len__"):
            problems.append(f"column {label}: give a list of values, one per row")
            continue
        try:
            arrays[name] = pa.array(_ids_as_text(values) if name in (RECORD_ID, SUBJECT_ID) else values)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            problems.append(
                f"column {label} mixes types or holds values a column cannot: give one type per column "
                "(ids as text or integers, item ids and labels as integers, ratings as numbers)"
            )
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        problems.append(f"the columns have different lengths {lengths}: give one value per row in every column")
    if problems:
        raise DataValidationError(SOURCE, problems)
    return pa.table(arrays)


def _ids_as_text(values: Iterable[object]) -> list[object]:
    listed = list(values)
    if {type(v) for v in listed if v is not None} == {str, int}:  # not bool: type(True) is bool
        return [str(v) if type(v) is int else v for v in listed]
    return listed


def ingestion_view(receipt: IngestReceipt) -> Ingestion:
    """The HTTP API's answer for an ingest: counts, versions and the batch's keyed digest (no id of anyone)."""
    return Ingestion(
        request_id=receipt.request_id,
        status=receipt.status,
        batch_digest=receipt.batch_digest,
        rows_in_batch=receipt.rows_in_batch,
        rows_added=receipt.rows_added,
        rows_refused_erased=receipt.rows_refused_erased,
        subjects_refused_erased=receipt.subjects_refused_erased,
        rows_already_stored=receipt.rows_already_stored,
        subjects_added=receipt.subjects_added,
        new_subjects=receipt.new_subjects,
        shards_retrained=receipt.touched_shards,
        model_version_before=receipt.model_version_before,
        model_version_after=receipt.model_version_after,
        committed_at=receipt.committed_at,
        seconds=receipt.seconds,
        retrain_seconds=receipt.retrain_seconds,
        pending=list(receipt.pending),
    )


@dataclasses.dataclass(eq=False)
class _Waiting:
    """An ingest waiting for the worker, and its outcome once the worker has run it."""

    rows: pa.Table
    request_id: str | None
    since: float = dataclasses.field(default_factory=time.monotonic)
    receipt: IngestReceipt | None = None
    error: Exception | None = None
    done: bool = False
    #: Set while an erasure commit carries this ingest (``ServiceIngestion.take``/``prepare``).
    prepared: PreparedIngest | None = None


class ServiceIngestion:
    """The service's ingests: ``ingest`` (a caller's thread) queues one; the worker runs it (``due``, ``run_next``).

    Shares the service's locks: ``state`` guards the waiting ingests (and ``follow``'s lists),
    ``work`` the coordinator (``follow.coordinator``).
    """

    def __init__(
        self,
        job: JobConfig,
        follow: FollowUp,
        state: threading.Condition,
        work: threading.Lock,
        stopped: Callable[[], bool],
    ) -> None:
        self.coordinator = follow.coordinator
        self.settings = job.ingest
        self.follow = follow
        self._state = state
        self._work = work
        self._stopped = stopped
        self._lease_purpose = serve_purpose(job.service.namespace)
        # Without lineage: MLflow is the worker's registration step (FollowUp), never inside the commit.
        self._engine = Ingester(self.coordinator.session, lineage=None)
        self._waiting: deque[_Waiting] = deque()
        #: The service's ready-to-serve stage, told of each commit (set by the service once built).
        self.readiness: Readiness | None = None

    # ----- the caller's thread ---------------------------------------------------------------------
    def ingest(self, rows: pa.Table, request_id: str | None = None) -> IngestReceipt:
        """Add ``rows`` (canonical columns) once the erasures accepted before are committed; returns once served.

        ``request_id`` names the ingest in the store and MLflow (made up when omitted): the same id
        with the same rows returns the first receipt, and adds nothing. Rows of erased subjects are
        refused and counted, rows whose record id is stored already are left out.

        Raises:
            DataValidationError: bad rows, every problem listed (nothing is written).
            ConfigError: rows that are not a table, a bad request id.
            PersonalDataInTextError: the request id names a subject of the rows.
            IdempotencyConflictError: the request id already names an ingest of other rows.
            ServiceUnavailableError: the service stops first (nothing of this ingest was written).
            StoreBusyError, StorageUnavailableError, ShardRetrainFailed: for now; nothing was
                published, and the same call later does it (rows are matched by record id).
        """
        if not isinstance(rows, pa.Table):
            raise ConfigError(f"rows must be a pyarrow Table of canonical columns, not a {type(rows).__name__}")
        waiting = _Waiting(self._check(rows, request_id), request_id)
        with self._state:
            self._waiting.append(waiting)
            self._state.notify_all()
            while not waiting.done:
                if self._stopped() and waiting in self._waiting:  # not taken by the worker: nothing written
                    self._waiting.remove(waiting)
                    raise ServiceUnavailableError(
                        "the Expunge service stopped before this ingest ran; nothing of it was written: send it "
                        "again once the service runs (rows already stored are matched by record id)"
                    )
                self._state.wait(timeout=1.0)
        if waiting.error is not None:
            raise waiting.error
        assert waiting.receipt is not None
        return waiting.receipt

    def _check(self, rows: pa.Table, request_id: str | None) -> pa.Table:
        """The rows to ingest, in canonical types; bad ones refused before they wait for the worker.

        Raises:
            DataValidationError: every problem at once (the engine checks again, for any caller).
            ConfigError, PersonalDataInTextError: a bad request id, or one naming a subject of the rows.
        """
        manifest = self.coordinator.require_manifest()
        task = task_of(manifest.model)
        allowed = (RECORD_ID, SUBJECT_ID, *_TASK_COLUMNS.get(task, ()))
        unknown = [str(c)[:40] for c in rows.column_names if c not in allowed]
        problems = []
        if unknown:
            problems.append(
                f"unknown column(s) {unknown[:10]}: this store's model takes {', '.join(allowed)}; leave other "
                "columns out (they would be stored with the rows)"
            )
        known = rows.select([c for c in rows.column_names if c in allowed])
        try:
            known = validate_rows(known, SOURCE, task, model=manifest.model)
        except DataValidationError as exc:
            problems += exc.problems
        if problems:
            raise DataValidationError(SOURCE, problems)
        if request_id is not None:
            # It names the receipt, the new version and its MLflow run: never a person (as ``expunge ingest``).
            subjects = known.column(SUBJECT_ID).unique().to_pylist()
            screen_free_text("request_id", check_request_id(request_id), _named_in(request_id, subjects))
        return _canonical_types(known)

    def waiting(self) -> int:
        """How many ingests wait for the worker now."""
        with self._state:
            return len(self._waiting)

    # ----- the worker ------------------------------------------------------------------------------
    def due(self, oldest_erasure_since: float | None) -> bool:
        """Whether the worker runs an ingest next (the caller holds ``state``); see ``ingest_due``."""
        # Registration runs on its own thread (``Registrar``): an overdue one no longer goes first.
        return ingest_due(self._waiting[0].since if self._waiting else None, oldest_erasure_since, False)

    def run_next(self) -> None:
        """Run the oldest waiting ingest and hand its outcome to its caller; a committed one waits for registration."""
        with self._state:
            if not self._waiting:
                return
            waiting = self._waiting.popleft()
        receipt: IngestReceipt | None = None
        error: Exception | None = None
        committed = False
        try:
            with self._work:
                receipt, committed = self._add_rows(waiting.rows, waiting.request_id)
        except Exception as exc:  # the caller gets every error, a bug included; the worker goes on
            error = exc
            log.warning("ingest %s refused or failed: %s", waiting.request_id or "(unnamed)", type(exc).__name__)
        with self._state:
            waiting.receipt, waiting.error, waiting.done = receipt, error, True
            self._count(waiting, published=committed)
            if receipt is not None and committed:
                self.follow.unregistered.append(_registration(receipt))
            self._state.notify_all()
        if receipt is not None and committed and self.readiness is not None:
            self.readiness.committed(self.coordinator.manifest, (), ())  # the served model gains the rows once solved

    # ----- an ingest joining an erasure commit (coalescing) -------------------------------------------
    def take(self) -> _Waiting | None:
        """The oldest waiting ingest, taken for the erasure commit about to run (``joined`` hands it back)."""
        with self._state:
            return self._waiting.popleft() if self._waiting else None

    def prepare(self, taken: _Waiting | None, erasing: list[str]) -> PreparedIngest | None:
        """``taken``'s batch planned on the published version to join the commit (the caller holds ``work``).

        Rows of the ``erasing`` subjects are refused, as a tombstone would. None when nothing joins:
        no ingest, a replayed request id (it is answered alone), or a batch the engine refuses
        (its caller gets the error).
        """
        if taken is None or taken.done or (taken.request_id is not None and self._stored(taken.request_id)):
            return None
        try:
            prepared = self._engine.prepare(taken.rows, taken.request_id, self.settings, SOURCE, erasing)
        except Exception as exc:  # the caller gets the error; the erasure goes on alone
            with self._state:
                taken.error, taken.done = exc, True
                self._count(taken, published=False)
            return None
        taken.prepared = prepared if prepared.plan is not None else None  # nothing new: it runs alone, at once
        return taken.prepared

    def joined(self, taken: _Waiting | None) -> None:
        """Answer ``taken``'s caller with its receipt once the erasure committed it; else it waits again, first."""
        if taken is None:
            return
        with self._state:
            if taken.prepared is not None and taken.prepared.receipt is not None:
                taken.receipt, taken.done = taken.prepared.receipt, True  # registered with the erasure's version
                self._count(taken, published=True)
            elif not taken.done:
                taken.prepared = None
                self._waiting.appendleft(taken)
            self._state.notify_all()

    def _count(self, answered: _Waiting, published: bool) -> None:
        """Count an answered ingest by outcome, and the rows it added (the caller holds ``state``).

        ``published``: the answer's rows went into a new version now; a replayed request id (its
        first receipt again) or a batch of rows already stored added nothing.
        """
        counts = self.follow.counts
        if answered.receipt is None:
            counts["ingests_failed"] += 1
        elif published:
            counts["ingests_ingested"] += 1
            counts["rows_ingested"] += answered.receipt.rows_added
        else:
            counts["ingests_nothing_new"] += 1

    def _add_rows(self, rows: pa.Table, request_id: str | None) -> tuple[IngestReceipt, bool]:
        """The engine call (the caller holds ``work``): the receipt, and whether a new version was published.

        A retried request id gets its first receipt, and publishes nothing.
        """
        if request_id is not None:
            stored = self._stored(request_id)
            if stored is not None:
                return self._replayed(stored, rows), False
        try:
            receipt = self._engine.ingest(rows, request_id, self.settings, SOURCE)
            return receipt, receipt.status == "ingested"
        except StoreBusyError:
            # The lease lapsed (renewals stalled) or another writer holds it: take it back for the next call.
            self.coordinator.session.lease.reacquire(self._lease_purpose)
            raise

    def _stored(self, request_id: str) -> IngestReceipt | None:
        stored = self.coordinator.catalog.read_ingest_receipt(request_id)
        return IngestReceipt.model_validate_json(stored) if stored is not None else None

    def _replayed(self, stored: IngestReceipt, rows: pa.Table) -> IngestReceipt:
        """``stored`` when ``rows`` are the batch it recorded (a retry); else the id names another ingest."""
        manifest = self.coordinator.require_manifest()
        digest = prepare_batch(rows, manifest, self.coordinator.hasher, set(), {}, SOURCE).digest
        if digest != stored.batch_digest:
            raise IdempotencyConflictError(
                f"request id {stored.request_id} already names an ingest of other rows; use a new request id for "
                "new rows (or none: one is made up)"
            )
        return stored


def _named_in(request_id: str, subjects: Iterable[object]) -> list[str]:
    """The subjects the screen must fold and look for in ``request_id``; the others cannot stand in it.

    A request id is ASCII letters, digits and ``. _ -``, which the screen's folding leaves as it is;
    so it does an ASCII id without ``%`` or ``&``, which can stand in the request id only as a part
    of its text. Checking only those keeps a batch of 100,000 subjects from costing seconds.
    """
    named = []
    for subject in subjects:
        text = str(subject)
        if text in request_id or not text.isascii() or "%" in text or "&" in text:
            named.append(text)
    return named


def _canonical_types(rows: pa.Table) -> pa.Table:
    """Validated rows in the types training reads (a JSON ``4`` rating is ``4.0``, as in a file)."""
    types = {ITEM_ID: pa.int64(), RATING: pa.float32(), LABEL: pa.int64()}
    for name, kind in types.items():
        if name in rows.column_names:
            rows = rows.set_column(rows.column_names.index(name), name, rows.column(name).cast(kind))
    if FEATURES in rows.column_names and len(rows):
        width = len(rows.column(FEATURES)[0].as_py() or ())
        kind = pa.list_(pa.float32(), width)
        rows = rows.set_column(rows.column_names.index(FEATURES), FEATURES, rows.column(FEATURES).cast(kind))
    return rows


def _registration(receipt: IngestReceipt) -> Committed:
    """The commit for ``FollowUp``'s next registration: it brings MLflow up to the published version.

    ``FollowUp`` holds commits by their erasure receipts; an ingest answers no erasure request, so
    it holds none, and its batch receipt stands in only for the commit (the version it names).
    """
    stand_in = ErasureReceipt(
        request_id=receipt.request_id,
        status="erased",
        subject_digests=(),
        model_version_before=receipt.model_version_before,
        model_version_after=receipt.model_version_after,
        committed_at=receipt.committed_at,
    )
    return Committed([], stand_in)
