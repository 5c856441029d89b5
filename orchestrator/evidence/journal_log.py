"""The service journal's log: every journal write and delete, numbered and hash-chained.

Each write or delete of a journal object (``journal/requests/...``, ``journal/committed/...``)
is followed by a log entry ``journal/log/<sequence>.json`` made with an exclusive create: the
operation, the object's key, the sha256 of the bytes written, and the sha256 of the entry
before. Receipts record the log position when they are chained (``ErasureReceipt.journal_sequence``
and ``journal_head_sha256``), so a journal deleted, cut short or edited after a receipt no longer
reaches what that receipt saw, and ``walk_journal`` says so.

The object is written before its log entry: a writer that dies between the two leaves an
object the log does not account for, reported as a warning (as are journals from before the
log existed); a logged object deleted or changed without a logged operation is a break.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from expunge.orchestrator.errors import StorageConflictError
from expunge.orchestrator.receipts import utc_now
from expunge.shards.store import ObjectStore

__all__ = ["JOURNAL_LOG_PREFIX", "JournalLog", "JournalLogEntry", "JournalWalk", "walk_journal"]

log = logging.getLogger(__name__)

#: Where the log's entries live: ``journal/log/00000001.json``, ...
JOURNAL_LOG_PREFIX = "journal/log"
_EVIDENCE_CACHE = "journal/evidence/"  # the HTTP API's cache of verify reports: re-computable, not the journal
_APPEND_ATTEMPTS = 50
_HEAD_READS, _HEAD_WAIT_S = 100, 0.02
_heads: dict[str, tuple[int, str | None]] = {}  # store uri -> newest (sequence, sha256) this process knows
_heads_lock = threading.Lock()


class JournalLogEntry(BaseModel):
    """One journal operation: ``write`` (``sha256`` of the bytes) or ``delete`` (``sha256`` None)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sequence: int
    op: Literal["write", "delete"]
    key: str
    sha256: str | None
    previous_sha256: str | None
    at: str


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry_key(sequence: int) -> str:
    return f"{JOURNAL_LOG_PREFIX}/{sequence:08d}.json"


def _sequences(store: ObjectStore) -> list[int]:
    names = (k.rsplit("/", 1)[-1] for k in store.list_keys(JOURNAL_LOG_PREFIX))
    return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())


class JournalLog:
    """Appends to and reads the head of one store's journal log (thread-safe)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def head(self) -> tuple[int, str | None]:
        """The newest entry's (sequence, sha256 of its bytes); (0, None) for an empty log.

        Listed once per process and store, then followed forward one probe at a time (the
        service is the journal's single writer, so the probe almost always finds nothing).
        """
        with _heads_lock:
            known = _heads.get(self.store.uri)
        if known is None:
            sequences = _sequences(self.store)
            sequence = sequences[-1] if sequences else 0
            known = (sequence, self._complete_sha(sequence) if sequence else None)
        sequence, sha = known
        while self.store.exists(_entry_key(sequence + 1)):
            sequence += 1
            sha = self._complete_sha(sequence)
        with _heads_lock:
            _heads[self.store.uri] = (sequence, sha)
        return sequence, sha

    def _complete_sha(self, sequence: int) -> str:
        """sha256 of entry #``sequence`` once its bytes are all there.

        A local exclusive create shows the file before its bytes are written, so a racing writer
        may see it empty or partial: wait until it parses (about 2 s at most), then take it as is.
        """
        data = b""
        for _ in range(_HEAD_READS):
            data = self.store.get(_entry_key(sequence))
            try:
                JournalLogEntry.model_validate_json(data)
                break
            except ValidationError:
                time.sleep(_HEAD_WAIT_S)
        return _sha256(data)

    def _known(self) -> tuple[int, str | None]:
        with _heads_lock:
            known = _heads.get(self.store.uri)
        return known if known is not None else self.head()

    def record(self, op: Literal["write", "delete"], key: str, data: bytes | None = None) -> JournalLogEntry:
        """Log one operation on journal object ``key`` (``data``: the bytes written).

        Raises:
            StorageConflictError: 50 lost races in a row (many concurrent writers).
            StorageUnavailableError: the store does not answer.
        """
        for attempt in range(_APPEND_ATTEMPTS):
            # The head this process knows (no probe: the service is the single writer); a lost race
            # shows as a conflict, and the next attempt follows the log forward.
            sequence, previous = self._known() if attempt == 0 else self.head()
            entry = JournalLogEntry(
                sequence=sequence + 1,
                op=op,
                key=key,
                sha256=_sha256(data) if data is not None else None,
                previous_sha256=previous,
                at=utc_now(),
            )
            body = entry.model_dump_json().encode()
            try:
                self.store.create_exclusive(_entry_key(entry.sequence), body)
            except StorageConflictError:
                continue  # another writer took the number: follow the head and try the next
            with _heads_lock:
                _heads[self.store.uri] = (entry.sequence, _sha256(body))
            return entry
        raise StorageConflictError(f"could not append to the journal log of {self.store.uri} (many writers)")


class JournalWalk(BaseModel):
    """What a walk of the journal log found: ``broken`` are tampering or loss, ``warnings`` are not."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    entries: int
    head_sha256: str | None
    broken: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def walk_journal(store: ObjectStore, reached: int = 0, reached_sha256: str | None = None) -> JournalWalk:
    """Re-read the journal log and the journal objects; report gaps, broken links and unlogged changes.

    ``reached``/``reached_sha256``: the newest log position a chained receipt recorded
    (``ErasureReceipt.journal_sequence``); a log that no longer reaches it, or whose entry there
    hashes differently, was deleted, cut short or rewritten. Reads every log entry and every
    journal object once; writes nothing.
    """
    broken: list[str] = []
    warnings: list[str] = []
    sequences = _sequences(store)
    newest = sequences[-1] if sequences else 0
    present = set(sequences)
    previous: str | None = None
    latest: dict[str, JournalLogEntry] = {}
    hashes: dict[int, str] = {}
    for sequence in range(1, newest + 1):
        if sequence not in present:
            broken.append(f"journal log entry #{sequence} is missing: deleted")
            previous = None
            continue
        data = store.get(_entry_key(sequence))
        hashes[sequence] = _sha256(data)
        try:
            entry = JournalLogEntry.model_validate_json(data)
        except ValidationError:
            broken.append(f"journal log entry #{sequence} is not a valid entry: edited")
            previous = hashes[sequence]
            continue
        if entry.sequence != sequence:
            broken.append(f"journal log entry #{sequence} holds number {entry.sequence}: entries were moved")
        elif sequence > 1 and previous is not None and entry.previous_sha256 != previous:
            broken.append(f"journal log entry #{sequence - 1} was edited (entry #{sequence} holds another hash of it)")
        previous = hashes[sequence]
        latest[entry.key] = entry
    if reached > newest:
        broken.append(
            f"a chained receipt saw the journal log at entry #{reached}, but it now ends at #{newest}: the journal "
            "was deleted or cut short"
        )
    elif reached and reached_sha256 is not None and hashes.get(reached) not in (None, reached_sha256):
        broken.append(f"journal log entry #{reached} is not the one a chained receipt saw: the log was rewritten")
    stored = {
        k
        for k in store.list_keys("journal")
        if k.endswith(".json") and not k.startswith((JOURNAL_LOG_PREFIX, _EVIDENCE_CACHE))
    }
    for key, entry in sorted(latest.items()):
        if entry.op == "delete":
            if key in stored:
                warnings.append(f"{key} was logged as deleted but is present (written again without the log)")
            continue
        if key not in stored:
            broken.append(f"{key} is in the journal log but missing from the journal: deleted")
        elif _sha256(store.get(key)) != entry.sha256:
            broken.append(f"{key} differs from what the journal log recorded: edited")
    unlogged = sorted(stored - set(latest))
    if unlogged:
        warnings.append(
            f"{len(unlogged)} journal object(s) the log does not account for (written before the log existed, or "
            f"by a writer that stopped between its two writes), e.g. {unlogged[0]}"
        )
    return JournalWalk(
        entries=len(sequences),
        head_sha256=hashes.get(newest),
        broken=tuple(broken),
        warnings=tuple(warnings),
    )
