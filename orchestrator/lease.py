"""One writer per store: a lease with a fencing token, kept in the store itself.

Each holder creates ``lease/<token>.json`` with a create-if-absent write (``O_EXCL``-like on a
folder, ``If-None-Match: *`` on S3), so two contenders never share a token. The holder renews it
by rewriting ``lease/<token>.beat`` every ``ttl/4`` and ends it with ``lease/<token>.released``.
A lease is free when released, expired (no beat for ``storage.lease_ttl_s`` by the store's
clock), or held by a process of this host that no longer exists (taken over at once).

The token fences every commit: ``StoreLease.check`` (called before each manifest publish and
tombstone append) fails when a newer token exists, or when this process could not renew for
a whole TTL, so a writer that stalled past its lease never publishes over its successor
(Kleppmann, "How to do distributed locking", 2016; Gray & Cheriton's leases, SOSP 1989).

A lease belongs to a process: every ``StoreSession`` of one process shares it (re-entrant,
counted), so only processes exclude each other.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from expunge.orchestrator.errors import LeaseLostError, StorageConflictError, StoreBusyError
from expunge.orchestrator.processes import process_alive, process_started
from expunge.shards.errors import ExpungeError
from expunge.shards.store import ObjectInfo, ObjectStore

__all__ = ["LeaseRecord", "LeaseState", "StoreLease", "lease_state", "process_owner", "process_pid_space"]

log = logging.getLogger(__name__)

_PREFIX = "lease"
_KEY = re.compile(r"^lease/(\d{8})\.(json|beat|released)$")
_ATTEMPTS = 20
#: Seconds added to a TTL before a lease counts as expired (S3 keeps whole-second timestamps).
_CLOCK_SLACK_S = 1.0
#: Identifies this process among every process that may hold a store's lease.
_PROCESS_NONCE = uuid.uuid4().hex[:12]


def process_pid_space() -> str | None:
    """This boot of this machine and this process's PID namespace (None where ``/proc`` says neither)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def process_owner() -> str:
    """``host:pid:nonce`` of this process (the nonce tells a reused pid from its predecessor)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_PROCESS_NONCE}"


class LeaseRecord(BaseModel):
    """Who holds (or held) a token: written once at acquisition, and again in each beat."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    token: int
    owner: str
    host: str
    pid: int
    purpose: str
    since: str
    ttl_s: float
    #: ``process_pid_space()`` of the holder: its pid means something only to processes sharing it.
    pid_space: str | None = None
    #: ``process_started(pid)`` of the holder: a later process given the same pid is not the holder.
    pid_started: str | None = None

    def describe(self) -> str:
        return f"{self.purpose} on host {self.host}, pid {self.pid}, since {self.since} (lease token {self.token})"


@dataclass(frozen=True)
class LeaseState:
    """The newest token of a store and how alive its holder is (pure input to ``lease_state``)."""

    record: LeaseRecord | None
    last_seen: datetime | None
    released: bool
    #: The highest token number listed, readable or not: the next holder takes ``top + 1``.
    top: int = 0


def lease_state(
    state: LeaseState, now: datetime, owner: str, host: str, pid_alive: bool, pid_space: str | None
) -> Literal["free", "mine", "held", "expired", "dead"]:
    """What a would-be writer may do with a store's lease (pure).

    ``free``/``expired``/``dead``: take the next token; ``mine``: this process holds it already;
    ``held``: another live holder has it. Expiry allows ``_CLOCK_SLACK_S`` for S3's whole-second
    timestamps. ``pid_alive`` is only consulted for a holder on ``host`` in this process's PID
    namespace (``pid_space``, ``process_pid_space``): a live process in another container looks dead.
    """
    record = state.record
    if record is None or state.released:
        return "free"
    if record.owner == owner:
        return "mine"
    age = (now - state.last_seen).total_seconds() if state.last_seen is not None else 0.0
    if age > record.ttl_s + _CLOCK_SLACK_S:
        return "expired"
    if record.host == host and pid_space is not None and record.pid_space == pid_space and not pid_alive:
        return "dead"
    return "held"


@dataclass
class _Held:
    token: int
    record: LeaseRecord
    count: int = 0
    renewed: float = field(default_factory=time.monotonic)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


_REGISTRY: dict[tuple[str, str], _Held] = {}
_REGISTRY_LOCK = threading.RLock()


class StoreLease:
    """The write lease of one store as this process sees it (``hold`` to write, ``check`` to fence)."""

    def __init__(self, store: ObjectStore, ttl_s: float = 30.0, owner: str | None = None) -> None:
        self.store = store
        self.ttl_s = float(ttl_s)
        self.owner = owner or process_owner()
        self._slot = (store.uri, self.owner)

    # ----- reading ------------------------------------------------------------------------------
    def read(self) -> LeaseState:
        """The newest token, its holder record and the last time the store saw it alive."""
        infos: dict[int, dict[str, ObjectInfo]] = {}
        for info in self.store.list_info(_PREFIX):
            match = _KEY.match(info.key)
            if match:
                infos.setdefault(int(match.group(1)), {})[match.group(2)] = info
        if not infos:
            return LeaseState(None, None, False)
        token = max(infos)
        parts = infos[token]
        if "json" not in parts:  # a beat without its record: a half-finished cleanup; treat as free
            return LeaseState(None, None, True, top=token)
        try:
            record = LeaseRecord.model_validate_json(self.store.get(parts["json"].key))
        except (ValidationError, ExpungeError):
            return LeaseState(None, None, True, top=token)  # unreadable: nobody can prove they hold it
        seen = max(p.modified for kind, p in parts.items() if kind != "released")
        return LeaseState(record, seen, "released" in parts, top=token)

    def holder(self) -> LeaseRecord | None:
        """The live holder of the store's lease, or None when it is free, released or expired."""
        state = self.read()
        verdict = lease_state(
            state, datetime.now(UTC), "", socket.gethostname(), self._alive(state), process_pid_space()
        )
        return state.record if verdict in ("held", "mine") else None

    def refuse_if_held(self) -> None:
        """Fail at once, before any work, when another live process holds the lease.

        Raises:
            StoreBusyError: naming the holder (host, pid, since).
        """
        holder = self.holder()
        if holder is not None and holder.owner != self.owner:
            raise self._busy(holder)

    def _busy(self, record: LeaseRecord) -> StoreBusyError:
        if record.purpose.startswith("expunge serve"):
            namespace = record.purpose.partition("(namespace ")[2].rstrip(")") or "expunge"
            advice = (
                f"send erasures to that service (`expunge forget --service --namespace {namespace}`) and new rows "
                "through it (`POST /v1/ingestions`, `Client.ingest`, `RayClient.ingest`), or stop it first "
                f"(`expunge serve --stop --namespace {namespace}`)"
            )
        else:
            advice = "wait until that job finishes"
        return StoreBusyError(
            f"the store {self.store.uri} is being written by {record.describe()}. One writer per store: {advice}. "
            f"A holder that dies without releasing it is taken over {record.ttl_s:.0f} s after its last renewal "
            "(at once on its own host)"
        )

    @staticmethod
    def _alive(state: LeaseState) -> bool:
        return state.record is None or process_alive(state.record.pid, state.record.pid_started)

    # ----- holding ------------------------------------------------------------------------------
    @contextmanager
    def hold(self, purpose: str) -> Iterator[int]:
        """Hold the lease for the block (re-entrant within this process); yields the fencing token.

        Raises:
            StoreBusyError: another live process holds it; the message names the holder.
        """
        token = self.acquire(purpose)
        try:
            yield token
        finally:
            self.release()

    def acquire(self, purpose: str, wait_s: float = 0.0) -> int:
        """Take (or join) the lease; every ``acquire`` needs one ``release``. Returns the token.

        ``wait_s``: how long to keep trying, once a second, while another process holds it.

        Raises:
            StoreBusyError: another live process holds it (still, after ``wait_s``); the message names it.
        """
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self._acquire(purpose)
            except StoreBusyError as exc:
                if time.monotonic() >= deadline:
                    raise
                log.warning("waiting for the write lease: %s", exc)
                time.sleep(1.0)

    def _acquire(self, purpose: str) -> int:
        with _REGISTRY_LOCK:
            held = _REGISTRY.get(self._slot)
            if held is not None:
                held.count += 1
                return held.token
            for _ in range(_ATTEMPTS):
                state = self.read()
                verdict = lease_state(
                    state, datetime.now(UTC), self.owner, socket.gethostname(), self._alive(state), process_pid_space()
                )
                if verdict == "held":
                    assert state.record is not None
                    raise self._busy(state.record)
                token = max(state.top, state.record.token if state.record else 0) + 1
                if verdict in ("expired", "dead") and state.record is not None:
                    log.warning("taking over the %s lease of %s: %s", verdict, self.store.uri, state.record.describe())
                record = LeaseRecord(
                    token=token,
                    owner=self.owner,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    purpose=purpose,
                    since=datetime.now(UTC).isoformat(timespec="seconds"),
                    ttl_s=self.ttl_s,
                    pid_space=process_pid_space(),
                    pid_started=process_started(os.getpid()),
                )
                try:
                    self.store.create_exclusive(f"{_PREFIX}/{token:08d}.json", record.model_dump_json().encode())
                except StorageConflictError:
                    continue  # another contender took this token: read again
                held = _Held(token, record, count=1)
                _REGISTRY[self._slot] = held
                self._start_renewer(held)
                log.debug("holding the lease of %s (token %d, %s)", self.store.uri, token, purpose)
                self._forget_older(token)
                return token
            raise StoreBusyError(f"could not take the lease of {self.store.uri} after {_ATTEMPTS} tries; try again")

    def reacquire(self, purpose: str) -> bool:
        """After ``LeaseLostError``: give up this process's lapsed hold and take the lease anew, keeping its count.

        For a long-lived holder (the service) whose renewals stalled or whose lease was taken over
        while it was stopped. Returns False, holding nothing, while another live process holds it.
        """
        with _REGISTRY_LOCK:
            held = _REGISTRY.pop(self._slot, None)
        if held is not None:
            held.stop.set()
        try:
            self._acquire(purpose)
        except StoreBusyError as exc:
            log.warning("the write lease is not back yet: %s", exc)
            return False
        with _REGISTRY_LOCK:
            _REGISTRY[self._slot].count = held.count if held is not None else 1
        log.warning("took the write lease of %s back (%s)", self.store.uri, purpose)
        return True

    def release(self) -> None:
        """Drop one hold; the last one ends the lease (``lease/<token>.released``)."""
        with _REGISTRY_LOCK:
            held = _REGISTRY.get(self._slot)
            if held is None:
                return
            held.count -= 1
            if held.count > 0:
                return
            del _REGISTRY[self._slot]
        held.stop.set()
        if held.thread is not None:
            held.thread.join(timeout=5)
        try:
            if self.read().record == held.record:
                self.store.put(f"{_PREFIX}/{held.token:08d}.released", b"")
        except ExpungeError as exc:  # it expires by itself after its TTL
            log.warning("could not release the lease of %s (%s); it expires in %.0f s", self.store.uri, exc, self.ttl_s)

    @property
    def token(self) -> int | None:
        """The token this process holds, or None."""
        with _REGISTRY_LOCK:
            held = _REGISTRY.get(self._slot)
            return held.token if held else None

    def check(self) -> int:
        """Fence a commit: this process must still hold the newest token. Returns it.

        Raises:
            LeaseLostError: not held, not renewed for a whole TTL, or a newer holder exists.
        """
        with _REGISTRY_LOCK:
            held = _REGISTRY.get(self._slot)
        if held is None:
            raise LeaseLostError(
                f"this process does not hold the write lease of {self.store.uri}; nothing was published"
            )
        if time.monotonic() - held.renewed > self.ttl_s:
            raise LeaseLostError(
                f"the write lease of {self.store.uri} was not renewed for {self.ttl_s:.0f} s (the store was "
                "unreachable or this process stalled), so another writer may hold it; nothing was published"
            )
        state = self.read()
        if state.record is None or state.record.token != held.token:
            newer = state.record.describe() if state.record else "nobody"
            raise LeaseLostError(
                f"the write lease of {self.store.uri} (token {held.token}) was taken over by {newer}; "
                "nothing was published"
            )
        return held.token

    # ----- upkeep -------------------------------------------------------------------------------
    def _start_renewer(self, held: _Held) -> None:
        def renew() -> None:
            period = max(self.ttl_s / 4, 0.05)
            while not held.stop.wait(period):
                try:
                    self.store.put(f"{_PREFIX}/{held.token:08d}.beat", held.record.model_dump_json().encode())
                    held.renewed = time.monotonic()
                except Exception as exc:  # the next beat tries again; check() fences once a TTL passes
                    log.warning("could not renew the lease of %s: %s", self.store.uri, exc)

        held.thread = threading.Thread(target=renew, name="expunge-lease", daemon=True)
        held.thread.start()

    def _forget_older(self, token: int) -> None:
        """Delete the records of tokens before the previous one (history, not state)."""
        old = [i.key for i in self.store.list_info(_PREFIX) if (m := _KEY.match(i.key)) and int(m.group(1)) < token - 1]
        if old:
            # Said first: the store's own line ("deleted N object version(s)") names no reason.
            log.debug(
                "tidying the lease history of %s: deleting %d record(s) of tokens before %d (finished writers; no data)",
                self.store.uri,
                len(old),
                token - 1,
            )
            try:
                self.store.delete(old)
            except ExpungeError as exc:
                log.debug("could not tidy old lease records: %s", exc)
