"""The durable request journal of the erasure service, kept in the store next to the data.

A request is written (exclusive create) before it is acknowledged, so an acknowledged request
survives any crash; its stages follow as separate objects written once each:

    journal/requests/<request id>.json     accepted: subject digests, reason, received time
    journal/batches/<batch id>.json        the requests coalesced into one retrain (before it runs)
    journal/committed/<request id>.json    the request's receipt once the store commit is served
    journal/registered/<request id>.json   when MLflow had the new version, earlier ones purged
    journal/failed/<request id>.json       a request that cannot succeed (a typed error; never after its commit)
    journal/purged/<request id>.json       the steps its receipt left pending (``pending``) are done
    journal/extended/<request id>.json     its deadline extended (months, reason; GDPR Art. 12(3))
    journal/tickets/<ticket label>/<request id>.json   finds requests by the caller's ticket

    journal/log/<sequence>.json            every write and delete above, numbered and hash-chained

Subjects appear only as keyed digests. On start the service reads the journal and finishes
whatever is open (``ErasureService``).
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, computed_field, model_validator

from expunge.orchestrator.errors import StorageConflictError, StorageCorruptError
from expunge.orchestrator.evidence.journal_log import JournalLog
from expunge.orchestrator.receipts import ErasureReceipt, utc_now
from expunge.shards.store import ObjectStore

__all__ = ["BatchEntry", "ExtensionEntry", "Journal", "JournalEntry", "Registration", "RequestStatus", "Stage"]

Stage = Literal["accepted", "committed", "registered", "failed"]

_PREFIX = "journal"


class JournalEntry(BaseModel):
    """An accepted request (digests only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    request_id: str
    subject_digests: tuple[str, ...]
    received_at: str
    #: Free text from the caller, screened (``expunge.orchestrator.screening``): never a subject id.
    reason: str | None = None
    idempotent: bool = False
    #: The caller's reference (e.g. the privacy desk's case number), screened like ``reason``.
    ticket: str | None = None
    #: One calendar month after ``received_at`` (GDPR Art. 12(3)); None in journals older than the clock.
    due_at: str | None = None


class ExtensionEntry(BaseModel):
    """The deadline of a request extended (Art. 12(3)): months in all (1 or 2), why, and when."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    months: int
    reason: str
    extended_at: str


class BatchEntry(BaseModel):
    """Requests coalesced into one store commit; written before the retrain starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    batch_id: str
    request_ids: tuple[str, ...]
    created_at: str


class Registration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    registered_at: str
    registry_version: str | None
    registry_version_before: str | None = None


class RequestStatus(BaseModel):
    """Where a request stands; ``receipt`` is set from ``committed`` on (``registered_at`` filled at registration)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    request_id: str
    stage: Stage
    received_at: str
    committed_at: str | None = None
    registered_at: str | None = None
    receipt: ErasureReceipt | None = None
    error: str | None = None
    #: Steps after the commit not done yet, each ``"<step>: <cause>"`` (purge, receipt log,
    #: registration); retried with backoff until they succeed. Empty once done.
    pending: tuple[str, ...] = ()
    #: When the served model first reflected the commit (``ready``): the exact solve of its version
    #: (or a later one) swapped in; for a model served by its shard actors, the commit itself.
    #: Known to the process that committed it (not journalled); ``ready_to_serve_s`` is ready_at - committed_at.
    ready_at: str | None = None
    ready_to_serve_s: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _state_is_derived(cls, data: object) -> object:
        return {k: v for k, v in data.items() if k != "state"} if isinstance(data, dict) else data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def state(self) -> str:
        """The lifecycle in words: accepted, committed, "<step> pending (retrying: <cause>)", done or failed.

        ``done``: registered (MLflow up to date, earlier versions purged) with nothing pending.
        """
        if self.pending:
            step, _, cause = self.pending[0].partition(": ")
            return f"{step} pending (retrying: {cause})"
        if self.stage == "registered":
            return "done"
        return self.stage

    def reached(self, stage: Literal["committed", "registered"]) -> bool:
        """True once the request is at ``stage`` or past it."""
        order = {"accepted": 0, "committed": 1, "registered": 2}
        return self.stage != "failed" and order[self.stage] >= order[stage]


class Journal:
    """Reads and writes the journal objects of one store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.log = JournalLog(store)

    def _put(self, key: str, data: bytes) -> None:
        """Write a journal object, then log it (numbered and chained: ``evidence.journal_log``)."""
        self.store.put(key, data)
        self.log.record("write", key, data)

    @staticmethod
    def _key(kind: str, name: str) -> str:
        return f"{_PREFIX}/{kind}/{name}.json"

    def accept(self, entry: JournalEntry) -> JournalEntry | None:
        """Write ``entry``; returns None when written, or the entry already stored under its id."""
        key, data = self._key("requests", entry.request_id), entry.model_dump_json().encode()
        try:
            self.store.create_exclusive(key, data)
        except StorageConflictError:
            return self.entry(entry.request_id)
        self.log.record("write", key, data)
        return None

    def entry(self, request_id: str) -> JournalEntry | None:
        key = self._key("requests", request_id)
        return JournalEntry.model_validate_json(self.store.get(key)) if self.store.exists(key) else None

    def sealed_in_open_batch(self, entry: JournalEntry) -> ErasureReceipt | None:
        """The request's own receipt when its batch committed and was sealed before its committed record was written.

        The service answers a request at the seal and writes its journal record beside the next
        batch (``JournalStage``); the batch record stays until then, so it names the commit.
        """
        from expunge.orchestrator.catalog import Catalog
        from expunge.orchestrator.erasure.resume import erased_rows
        from expunge.orchestrator.service.policy import split_receipt

        catalog = Catalog(self.store)
        for batch in self._batches_now():
            if entry.request_id not in batch.request_ids:
                continue
            text = catalog.read_request_receipt(batch.batch_id)  # written when the commit is sealed
            if text is None:
                return None
            shared = ErasureReceipt.model_validate_json(text)
            after = shared.model_version_after
            rows: dict[str, int] = {}
            if shared.status == "erased" and after is not None and after != shared.model_version_before:
                rows = erased_rows(catalog, catalog.read(after))
            return split_receipt(shared, entry, rows)
        return None

    def write_batch(self, batch: BatchEntry) -> None:
        self._put(self._key("batches", batch.batch_id), batch.model_dump_json().encode())

    def batches(self) -> list[BatchEntry]:
        return [BatchEntry.model_validate_json(self.store.get(k)) for k in self.store.list_keys(f"{_PREFIX}/batches")]

    def _batches_now(self) -> list[BatchEntry]:
        """``batches`` as a reader beside the writing service sees them: a record written or dropped
        while they are read (empty, partial or gone) is not there yet, or not any more."""
        found = []
        for key in self.store.list_keys(f"{_PREFIX}/batches"):
            try:
                found.append(BatchEntry.model_validate_json(self.store.get(key)))
            except (ValidationError, StorageCorruptError, FileNotFoundError):
                continue
        return found

    def drop_batch(self, batch_id: str) -> None:
        key = self._key("batches", batch_id)
        self.store.delete([key])
        self.log.record("delete", key)

    def write_committed(self, receipt: ErasureReceipt) -> None:
        self._put(self._key("committed", receipt.request_id), receipt.model_dump_json().encode())

    def write_registered(self, request_id: str, registration: Registration) -> None:
        self._put(self._key("registered", request_id), registration.model_dump_json().encode())

    def write_purged(self, request_id: str) -> None:
        """The steps the request's committed receipt left pending are done (now)."""
        self._put(self._key("purged", request_id), json.dumps({"at": utc_now()}).encode())

    def purged_at(self, request_id: str) -> str | None:
        """When the pending steps were done; None if not (or, for journals before this was recorded, unknown)."""
        key = self._key("purged", request_id)
        if not self.store.exists(key):
            return None
        at = json.loads(self.store.get(key) or b"{}").get("at")
        return str(at) if at else None

    def write_ticket(self, label: str, request_id: str) -> None:
        """Index the request under its ticket's keyed label (``SubjectHasher.label``)."""
        self._put(f"{_PREFIX}/tickets/{label}/{request_id}.json", b"{}")

    def ticketed(self, label: str) -> list[str]:
        """Request ids filed under a ticket label, in name order."""
        return sorted(
            k.rsplit("/", 1)[1].removesuffix(".json") for k in self.store.list_keys(f"{_PREFIX}/tickets/{label}")
        )

    def write_extension(self, request_id: str, extension: ExtensionEntry) -> None:
        self._put(self._key("extended", request_id), extension.model_dump_json().encode())

    def extension(self, request_id: str) -> ExtensionEntry | None:
        key = self._key("extended", request_id)
        return ExtensionEntry.model_validate_json(self.store.get(key)) if self.store.exists(key) else None

    def write_failed(self, request_id: str, error: str) -> None:
        self._put(self._key("failed", request_id), error.encode())

    def sweep_partial_writes(self) -> int:
        """Delete half-written temporary files under journal/ (left by a killed writer); returns how many."""
        partial = [v.key for v in self.store.list_versions(f"{_PREFIX}/") if v.key.endswith(".partial")]
        if partial:
            self.store.delete(partial)
        return len(partial)

    def ids(self, kind: str) -> set[str]:
        """Request ids with an object of ``kind`` (requests, committed, registered, failed)."""
        return {k.rsplit("/", 1)[1].removesuffix(".json") for k in self.store.list_keys(f"{_PREFIX}/{kind}")}

    def status(self, request_id: str) -> RequestStatus | None:
        """The request's stage read from the store; None for an id never accepted."""
        entry = self.entry(request_id)
        if entry is None:
            return None
        failed = self._key("failed", request_id)
        if self.store.exists(failed):
            return RequestStatus(
                request_id=request_id,
                stage="failed",
                received_at=entry.received_at,
                error=self.store.get(failed).decode(),
            )
        committed = self._key("committed", request_id)
        if self.store.exists(committed):
            receipt = ErasureReceipt.model_validate_json(self.store.get(committed))
        elif (sealed := self.sealed_in_open_batch(entry)) is not None:
            receipt = sealed  # its record is still on the journal stage (or a crash left it to the restart)
        elif self.store.exists(committed):  # written, and its batch dropped, while the batches were read
            receipt = ErasureReceipt.model_validate_json(self.store.get(committed))
        else:
            return RequestStatus(request_id=request_id, stage="accepted", received_at=entry.received_at)
        pending = () if self.store.exists(self._key("purged", request_id)) else receipt.pending
        registered = self._key("registered", request_id)
        if not self.store.exists(registered):
            return RequestStatus(
                request_id=request_id,
                stage="committed",
                received_at=entry.received_at,
                committed_at=receipt.committed_at,
                receipt=receipt,
                pending=pending,
            )
        done = Registration.model_validate_json(self.store.get(registered))
        receipt = receipt.model_copy(
            update={
                "registered_at": done.registered_at,
                "registry_version_before": done.registry_version_before,
                "registry_version_after": done.registry_version,
            }
        )
        return RequestStatus(
            request_id=request_id,
            stage="registered",
            received_at=entry.received_at,
            committed_at=receipt.committed_at,
            registered_at=done.registered_at,
            receipt=receipt,
            pending=pending,
        )
