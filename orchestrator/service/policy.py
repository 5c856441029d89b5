"""Pure decisions of the erasure service: request ids, coalescing, what to do next, per-request receipts.

No Ray, no I/O: each function is a rule, tested on its own (``tests/service/test_policy.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from expunge.orchestrator.errors import (
    ConfigError,
    ExpungeError,
    LinkInStoreError,
    ShardRetrainFailed,
    ShardStartTimeout,
    StorageConflictError,
    StorageUnavailableError,
    StoreBusyError,
)
from expunge.orchestrator.receipts import ErasureReceipt

if TYPE_CHECKING:
    from expunge.orchestrator.service.journal import JournalEntry

__all__ = [
    "MAX_ATTEMPTS",
    "RETRYABLE",
    "RETRY_PAUSE_S",
    "WAITED_FOR",
    "Step",
    "batch_text",
    "check_idempotency_key",
    "check_subject_count",
    "check_subject_list",
    "check_timeout",
    "next_step",
    "request_id_for",
    "retry_pause",
    "split_receipt",
    "take_batch",
]

_MAX_KEY = 256

#: Failures of circumstance before a batch's commit: the batch is tried again after a pause.
RETRYABLE = (
    StorageConflictError,
    ShardRetrainFailed,
    ShardStartTimeout,
    StoreBusyError,
    StorageUnavailableError,
    LinkInStoreError,
)
#: Of those, what only time or a person sets right (the store does not answer; a link inside it):
#: the batch waits for it, however long, and is never failed for it (its requests stay accepted).
WAITED_FOR = (StorageUnavailableError, LinkInStoreError)
MAX_ATTEMPTS = 5
RETRY_PAUSE_S = 1.0
MAX_RETRY_PAUSE_S = 30.0


def retry_pause(attempt: int, error: ExpungeError) -> float | None:
    """Seconds to wait before trying a batch again after its ``attempt`` (1, 2, ...) failed with
    ``error`` (one of ``RETRYABLE``), growing by ``RETRY_PAUSE_S`` up to ``MAX_RETRY_PAUSE_S``; None:
    fail the batch (``MAX_ATTEMPTS`` reached for an error that is not ``WAITED_FOR``)."""
    if attempt >= MAX_ATTEMPTS and not isinstance(error, WAITED_FOR):
        return None
    return min(RETRY_PAUSE_S * attempt, MAX_RETRY_PAUSE_S)


def check_idempotency_key(key: str) -> str:
    """An idempotency key: 1-256 printable characters (it is stored only as a keyed digest).

    Raises:
        ConfigError: an empty key, one with control characters, or a longer one.
    """
    if not isinstance(key, str) or not key or len(key) > _MAX_KEY or not key.isprintable():
        raise ConfigError(
            f"the idempotency key is not usable: use 1-{_MAX_KEY} printable characters (no line breaks or other "
            "control characters), e.g. the "
            "ticket number of the erasure request; the same key always returns the same receipt"
        )
    return key


def request_id_for(key_digest: str) -> str:
    """The request id of an idempotency key, from its keyed digest (``SubjectHasher.label``).

    The same key always names the same request, so a retried submission finds the first one;
    the id never shows the key itself (it may be a ticket that names a person).
    """
    return f"idem-{key_digest[:32]}"


def take_batch(queued: Sequence[tuple[str, Sequence[str]]], max_subjects: int) -> int:
    """How many of the oldest queued requests ``(request_id, digests)`` to coalesce into one retrain.

    First come, first served: requests are taken in order while their distinct subjects stay
    within ``max_subjects``; the first request is always taken (its own size is limited at
    submission). Returns 0 only when nothing is queued.
    """
    if not queued:
        return 0
    seen: set[str] = set(queued[0][1])
    taken = 1
    for _, digests in queued[1:]:
        union = seen | set(digests)
        if len(union) > max_subjects:
            break
        seen = union
        taken += 1
    return taken


@dataclass(frozen=True)
class Step:
    """What the service's worker does next: ``commit`` a batch, ``register`` in MLflow, or ``wait``.

    ``wait_s`` is how long to wait at most (None: until something arrives).
    """

    kind: Literal["commit", "register", "wait"]
    wait_s: float | None = None


def next_step(
    queued: int,
    oldest_queued_age_s: float,
    unregistered: int,
    oldest_unregistered_age_s: float,
    window_s: float,
    register_within_s: float,
) -> Step:
    """Commit first (people wait for it), but never let registration lag more than ``register_within_s``.

    A queued request waits until the oldest one is ``window_s`` old, so requests that arrive
    meanwhile share its retrain. With nothing queued, committed erasures are registered at once.
    """
    register_due = unregistered > 0 and oldest_unregistered_age_s >= register_within_s
    if queued > 0:
        if register_due:
            return Step("register")
        if oldest_queued_age_s >= window_s:
            return Step("commit")
        wait = window_s - oldest_queued_age_s
        if unregistered > 0:
            wait = min(wait, register_within_s - oldest_unregistered_age_s)
        return Step("wait", max(wait, 0.0))
    if unregistered > 0:
        return Step("register")
    return Step("wait", None)


def batch_text(entries: Sequence[JournalEntry]) -> tuple[str | None, str | None]:
    """The (ticket, reason) of a batch's shared receipt: its request's own when it ran alone, else none.

    A coalesced batch's receipt (and MLflow run) stands for several requests; each request's own
    receipt (``split_receipt``) carries its ticket and reason.
    """
    if len(entries) == 1:
        return entries[0].ticket, entries[0].reason
    return None, None


def split_receipt(batch: ErasureReceipt, entry: JournalEntry, rows_by_digest: Mapping[str, int]) -> ErasureReceipt:
    """The receipt of one request (``entry``) coalesced into ``batch`` (the receipt of the batch's store commit).

    The request's own subjects, which of them had no data, and their rows (from the placement
    before the erasure), its ticket and reason; shards, versions, times and deleted objects are
    the batch's, and ``batch_id`` names it (None when the request ran alone).
    """
    request_id, digests = entry.request_id, entry.subject_digests
    # A subject the batch's receipt does not name had no data: a receipt rebuilt after a kill
    # (``Sealer.unsealed``) names only the subjects its commit erased (their tombstone entry).
    erased = set(batch.subject_digests) - set(batch.not_found_digests)
    earlier = set(batch.already_erased_digests)
    own = list(dict.fromkeys(digests))
    not_found = tuple(d for d in own if d not in erased)
    found = [d for d in own if d in erased]
    return batch.model_copy(
        update={
            "request_id": request_id,
            "status": "erased" if found else "not_found",
            "subject_digests": tuple(own),
            "not_found_digests": not_found,
            "already_erased_digests": tuple(d for d in not_found if d in earlier),
            "rows_removed": sum(rows_by_digest.get(d, 0) for d in found),
            "batch_id": None if batch.request_id == request_id else batch.request_id,
            "ticket": entry.ticket,
            "reason": entry.reason,
        }
    )


def check_subject_count(count: int, limit: int) -> None:
    """Refuse an empty request or one above ``service.max_subjects_per_request``.

    Raises:
        ConfigError: ``count`` is 0 or above ``limit``.
    """
    if count == 0:
        raise ConfigError("an erasure request needs at least one subject id")
    if count > limit:
        raise ConfigError(
            f"the request names {count} subjects, above service.max_subjects_per_request={limit}: split it into "
            "several requests, or raise the limit in the service config"
        )


def check_subject_list(subject_ids: object) -> list[object]:
    """The request's ids as a list: a list or tuple of ids, nothing else.

    A single string would otherwise be read as one id per character (``"12"`` naming people
    ``1`` and ``2``), and a dict as its keys.

    Raises:
        ConfigError: anything but a list or tuple (a string, bytes, a dict, a set, None, a number, a generator).
    """
    if not isinstance(subject_ids, list | tuple):
        raise ConfigError(
            f'subject_ids must be a list of ids, e.g. forget(["user-7"]), not a {type(subject_ids).__name__}; '
            "a single string would be read as one id per character"
        )
    return list(subject_ids)


def check_timeout(timeout: object) -> float | None:
    """A wait limit in seconds: None (no limit) or a finite number (0 or less: do not wait).

    Raises:
        ConfigError: NaN, infinity, or not a number.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout):
        raise ConfigError(f"timeout {timeout!r}: give seconds as a finite number, or None to wait without a limit")
    return float(timeout)
