"""The receipt log: every request's receipt, hash-chained in the store, and the walk that checks it.

Each receipt of a store (found or not found) is published as ``receipts/chain/<sequence>.json``
with an exclusive create, and holds the sha256 of the stored bytes of the receipt before it
(``previous_receipt_sha256``; None for the first). The exclusive create is the head pointer:
two writers appending at once race for the same sequence number, one wins, and the other
re-reads the head, re-links its receipt to the winner's and takes the next number, so the log
stays one line whatever the concurrency. The same bytes are then kept under
``receipts/requests/<request id>.json`` (the by-id copy callers read); the chained copy is the
authoritative one (a repeated request id keeps every chained receipt, the by-id copy the last).

``walk_chain`` re-reads the whole log and names the first broken link: a missing sequence
number (a receipt deleted from the middle), a receipt whose bytes no longer match the hash its
successor holds (edited), a receipt in the wrong place (reordered), or a by-id copy, a
per-version receipt (``receipts/<version>.json``) or an MLflow request run that the log does
not account for (the newest receipts deleted, or one edited in a single place). What it cannot
catch: someone with write access to the store who rewrites every receipt after the one they
change *and* the witnesses outside the chain (docs/verification.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from expunge.orchestrator.catalog import Catalog
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.shards.errors import StorageConflictError
from expunge.shards.store import ObjectStore

__all__ = [
    "CHAIN_PREFIX",
    "BrokenLink",
    "ChainReport",
    "append_receipt",
    "chain_key",
    "chained_receipts",
    "chained_sequences",
    "walk_chain",
]

log = logging.getLogger(__name__)

#: Where chained receipts live: ``receipts/chain/00000001.json``, ...
CHAIN_PREFIX = "receipts/chain"
_REQUESTS_PREFIX = "receipts/requests"
_APPEND_ATTEMPTS = 50
_HEAD_READS = 100
_HEAD_WAIT_S = 0.02
#: Fields a per-version receipt (written before MLflow and the chain) shares with the chained one.
_VERSION_RECEIPT_FIELDS = (
    "request_id",
    "status",
    "subject_digests",
    "not_found_digests",
    "rows_removed",
    "shards",
    "untouched_shards",
    "model_version_before",
    "model_version_after",
    "deleted_objects",
)


def chain_key(sequence: int) -> str:
    """The store key of the ``sequence``-th chained receipt (1-based)."""
    return f"{CHAIN_PREFIX}/{sequence:08d}.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chained_sequences(store: ObjectStore) -> list[int]:
    """The sequence numbers present in the receipt log, ascending (a gap is a deleted receipt)."""
    return _sequences(store)


def _sequences(store: ObjectStore) -> list[int]:
    numbers = []
    for key in store.list_keys(CHAIN_PREFIX):
        name = key.rsplit("/", 1)[-1]
        if name.endswith(".json") and name[:-5].isdigit():
            numbers.append(int(name[:-5]))
    return sorted(numbers)


def append_receipt(store: ObjectStore, receipt: ErasureReceipt) -> ErasureReceipt:
    """Chain ``receipt`` after the newest one, publish it, and keep its by-id copy; returns the chained receipt.

    Raises:
        StorageConflictError: after 50 lost races in a row (many concurrent writers); the
            receipt was not published, submit the request again.
    """
    for _ in range(_APPEND_ATTEMPTS):
        sequences = _sequences(store)
        head = sequences[-1] if sequences else 0
        head_bytes = _read_head(store, head) if head else None
        if head_bytes is not None and _is_chained_as(head_bytes, receipt):
            # Already the head: this writer's own create went through before its answer was lost (a cut
            # connection; the retry then met its own object), or a retried seal. It is chained once.
            Catalog(store).write_request_receipt(receipt.request_id, head_bytes.decode())
            log.info("receipt of request %s was already chained as #%d", receipt.request_id, head)
            return ErasureReceipt.model_validate_json(head_bytes)
        previous = _sha256(head_bytes) if head_bytes is not None else None
        chained = receipt.model_copy(update={"chain_sequence": head + 1, "previous_receipt_sha256": previous})
        data = chained.model_dump_json(indent=1).encode()
        try:
            store.create_exclusive(chain_key(head + 1), data)
        except StorageConflictError:
            continue  # another request took this number: link to its receipt instead
        # Same bytes as the chained copy, so a walk can tell an edited copy from the original.
        Catalog(store).write_request_receipt(receipt.request_id, data.decode())
        log.info("receipt of request %s chained as #%d", receipt.request_id, head + 1)
        return chained
    raise StorageConflictError(
        f"could not append the receipt of request {receipt.request_id} to the receipt log of {store.uri} after "
        f"{_APPEND_ATTEMPTS} attempts (many concurrent writers); submit the request again"
    )


def _is_chained_as(head: bytes, receipt: ErasureReceipt) -> bool:
    """Whether ``head`` (a chained receipt's bytes) is ``receipt``, up to its place in the chain."""
    try:
        chained = ErasureReceipt.model_validate_json(head)
    except ValueError:
        return False
    place = {"chain_sequence", "previous_receipt_sha256"}
    return chained.model_dump(exclude=place) == receipt.model_dump(exclude=place)


def _read_head(store: ObjectStore, sequence: int) -> bytes:
    """The bytes of the newest receipt, once complete.

    A local exclusive create makes the file visible before its bytes are written, so a racing
    writer may see it empty or partial: wait until it parses (about 2 s at most). A head that
    never parses is linked as it is (the log goes on; the walk reports the damaged receipt).
    """
    data = b""
    for _ in range(_HEAD_READS):
        data = store.get(chain_key(sequence))
        try:
            if ErasureReceipt.model_validate_json(data).chain_sequence == sequence:
                return data
        except ValidationError:
            pass  # still being written (or damaged: decided after the last try)
        time.sleep(_HEAD_WAIT_S)
    log.warning("receipt #%d of %s does not parse; chaining after it as it is", sequence, store.uri)
    return data


def chained_receipts(store: ObjectStore, request_id: str) -> list[tuple[int, ErasureReceipt]]:
    """Every chained receipt of one request id, oldest first, with its sequence number (unreadable ones skipped)."""
    found = []
    for sequence in _sequences(store):
        try:
            receipt = ErasureReceipt.model_validate_json(store.get(chain_key(sequence)))
        except ValidationError:
            continue  # walk_chain reports it
        if receipt.request_id == request_id:
            found.append((sequence, receipt))
    return found


class BrokenLink(BaseModel):
    """One problem found in the receipt log; ``sequence`` is the link it breaks (None: outside the chain)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sequence: int | None
    key: str
    problem: str


class ChainReport(BaseModel):
    """What a walk of the receipt log found."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    storage: str
    checked_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    receipts: int
    #: sha256 of the newest chained receipt: write it down elsewhere to detect a later truncation.
    head_sha256: str | None
    broken: tuple[BrokenLink, ...] = ()
    #: Not breaks: by-id receipts the chain does not hold (written before this release, or by a
    #: writer that stopped between its two writes).
    warnings: tuple[BrokenLink, ...] = ()
    #: Witnesses outside the store that were checked too (e.g. "MLflow runs").
    witnesses: tuple[str, ...] = ()

    @property
    def intact(self) -> bool:
        return not self.broken

    @property
    def first_broken(self) -> BrokenLink | None:
        """The earliest broken link in chain order (problems outside the chain come last)."""
        if not self.broken:
            return None
        return min(self.broken, key=lambda b: (b.sequence is None, b.sequence or 0))


def walk_chain(store: ObjectStore, witnessed_request_ids: Iterable[str] | None = None) -> ChainReport:
    """Re-read the whole receipt log of ``store`` and report every broken link, earliest first.

    ``witnessed_request_ids``: request ids an independent record (the MLflow runs of this store)
    says were processed; each must have a chained receipt, which catches a log cut short at its
    newest end. Reads every receipt once; writes nothing.
    """
    broken: list[BrokenLink] = []
    warnings: list[BrokenLink] = []
    sequences = _sequences(store)
    newest = sequences[-1] if sequences else 0
    present = set(sequences)
    previous_sha: str | None = None
    chained_ids: dict[str, tuple[int, bytes]] = {}  # request id -> newest (sequence, bytes)
    chained_by_id: dict[str, list[ErasureReceipt]] = {}
    for sequence in range(1, newest + 1):
        key = chain_key(sequence)
        if sequence not in present:
            broken.append(BrokenLink(sequence=sequence, key=key, problem="missing: the receipt was deleted"))
            previous_sha = None
            continue
        # The newest may be mid-write by a concurrent append (visible before its bytes locally).
        data = _read_head(store, sequence) if sequence == newest else store.get(key)
        try:
            receipt = ErasureReceipt.model_validate_json(data)
        except ValidationError as exc:
            broken.append(
                BrokenLink(
                    sequence=sequence, key=key, problem=f"not a valid receipt (edited): {exc.errors()[0]['msg']}"
                )
            )
            previous_sha = _sha256(data)
            continue
        expected_previous = previous_sha if sequence > 1 else None
        if receipt.chain_sequence != sequence:
            broken.append(
                BrokenLink(
                    sequence=sequence,
                    key=key,
                    problem=f"holds sequence number {receipt.chain_sequence}: receipts were reordered or moved",
                )
            )
        elif sequence > 1 and previous_sha is None:
            pass  # the link before is missing or unreadable: already reported there
        elif receipt.previous_receipt_sha256 != expected_previous:
            broken.append(
                BrokenLink(
                    sequence=sequence,
                    key=key,
                    problem=f"the hash it holds of receipt #{sequence - 1} does not match that receipt: "
                    f"#{sequence - 1} was edited, or the two were reordered",
                )
            )
        previous_sha = _sha256(data)
        chained_ids[receipt.request_id] = (sequence, data)
        chained_by_id.setdefault(receipt.request_id, []).append(receipt)
    broken += _check_copies(store, chained_ids, warnings)
    broken += _check_version_receipts(store, chained_by_id)
    witnesses: list[str] = []
    if witnessed_request_ids is not None:
        witnesses.append("MLflow request runs")
        for request_id in sorted(set(witnessed_request_ids) - set(chained_by_id)):
            broken.append(
                BrokenLink(
                    sequence=None,
                    key=f"{_REQUESTS_PREFIX}/{request_id}.json",
                    problem=f"MLflow records request {request_id} but the receipt log holds no receipt of it: "
                    "the newest receipts were deleted, or never sealed (its process ended before the seal); the "
                    f"next writer of the store seals it, `expunge forget --request-id {request_id}` with its "
                    "subjects at once",
                )
            )
    head_sha = _sha256(store.get(chain_key(newest))) if newest in present else None
    report = ChainReport(
        storage=store.uri,
        receipts=len(sequences),
        head_sha256=head_sha,
        broken=tuple(sorted(broken, key=lambda b: (b.sequence is None, b.sequence or 0, b.key))),
        warnings=tuple(warnings),
        witnesses=tuple(witnesses),
    )
    log.info("receipt log of %s: %d receipt(s), %d broken link(s)", store.uri, report.receipts, len(report.broken))
    return report


def _claimed_sequence(data: bytes) -> int | None:
    """The ``chain_sequence`` a stored receipt copy names (None when it has none or does not parse)."""
    try:
        value = json.loads(data).get("chain_sequence")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def _check_copies(
    store: ObjectStore, chained: dict[str, tuple[int, bytes]], warnings: list[BrokenLink]
) -> list[BrokenLink]:
    """Each by-id copy must be the newest chained receipt of its request, byte for byte."""
    broken = []
    copies = {
        key.rsplit("/", 1)[-1][: -len(".json")]: key
        for key in store.list_keys(_REQUESTS_PREFIX)
        if key.endswith(".json") and key.count("/") == 2
    }
    for request_id, key in sorted(copies.items()):
        if request_id not in chained:
            claimed = _claimed_sequence(store.get(key))
            if claimed is not None:
                # A copy written by append_receipt names its place in the log; the chained
                # receipt is written first, so its absence means it was deleted or replaced.
                broken.append(
                    BrokenLink(
                        sequence=claimed,
                        key=key,
                        problem=f"claims to be chained receipt #{claimed}, but the log holds no receipt of request "
                        f"{request_id}: the chained receipt was deleted or replaced",
                    )
                )
                continue
            warnings.append(
                BrokenLink(
                    sequence=None,
                    key=key,
                    problem="a receipt outside the log (written before receipts were chained, or by a writer "
                    "that stopped between its two writes)",
                )
            )
            continue
        sequence, data = chained[request_id]
        if store.get(key) != data:
            broken.append(
                BrokenLink(
                    sequence=sequence,
                    key=key,
                    problem=f"differs from the chained receipt #{sequence} of request {request_id}: one of them "
                    "was edited",
                )
            )
    for request_id, (sequence, _) in sorted(chained.items()):
        if request_id not in copies:
            warnings.append(
                BrokenLink(
                    sequence=sequence,
                    key=f"{_REQUESTS_PREFIX}/{request_id}.json",
                    problem=f"no by-id copy of chained receipt #{sequence} (the chained copy is intact)",
                )
            )
    return broken


def _check_version_receipts(store: ObjectStore, chained: dict[str, list[ErasureReceipt]]) -> list[BrokenLink]:
    """Each per-version receipt must agree with a chained receipt of its request on what was erased."""
    broken = []
    for key in store.list_keys("receipts"):
        name = key.rsplit("/", 1)[-1]
        if key.count("/") != 1 or not name.endswith(".json") or not name[:-5].isdigit():
            continue
        data = store.get(key)
        try:
            stored = ErasureReceipt.model_validate_json(data)
        except ValidationError:
            broken.append(BrokenLink(sequence=None, key=key, problem="not a valid receipt (edited)"))
            continue
        candidates = chained.get(stored.request_id, [])
        mine = json.loads(stored.model_dump_json(include=set(_VERSION_RECEIPT_FIELDS)))
        if not any(json.loads(c.model_dump_json(include=set(_VERSION_RECEIPT_FIELDS))) == mine for c in candidates):
            problem = (
                f"the receipt log holds no receipt of request {stored.request_id}: it was deleted, or never "
                "sealed (the process that committed it ended, or its seal failed, before a later commit); "
                f"`expunge forget --request-id {stored.request_id}` with the same subjects seals it"
                if not candidates
                else f"disagrees with the chained receipt of request {stored.request_id}: one of them was edited"
            )
            broken.append(BrokenLink(sequence=None, key=key, problem=problem))
    return broken
