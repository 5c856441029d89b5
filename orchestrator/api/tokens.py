"""Scoped bearer tokens of the HTTP API, stored in the store only as salted hashes.

A token reads ``exp_<token id>_<secret>``: the id (12 hex digits) finds its record
(``access/tokens/<token id>.json``), the secret (256 random bits, URL-safe base64) is checked
against the record's salted HMAC-SHA256 in constant time. A slow password hash would add nothing
to a 256-bit random secret, and would cost every call. Deny by default: a token holds exactly the
scopes it was created with, and ``admin`` implies no other scope.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

from expunge.client.models import SCOPES
from expunge.orchestrator.errors import AuthenticationError, ConfigError, PermissionDeniedError, StorageConflictError
from expunge.orchestrator.receipts import utc_now
from expunge.shards.store import ObjectStore

__all__ = ["TOKEN_PREFIX", "TokenRecord", "TokenStore", "authorize", "check_scopes", "parse_token"]

TOKEN_PREFIX = "exp_"
_PREFIX = "access/tokens"
_TOKEN = re.compile(r"exp_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class TokenRecord(BaseModel):
    """What the store keeps of a token: never the secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    token_id: str
    name: str
    scopes: tuple[str, ...]
    salt: str
    digest: str
    created_at: str
    revoked_at: str | None = None


def _digest(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode(), hashlib.sha256).hexdigest()


def parse_token(text: str) -> tuple[str, str]:
    """``(token id, secret)`` of a bearer token.

    Raises:
        AuthenticationError: not an Expunge API token (the message never repeats it).
    """
    match = _TOKEN.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise AuthenticationError(
            "the bearer token is not an Expunge API token (exp_<id>_<secret>): ask the operator for one "
            "(`expunge tokens create --scope ... --name <client>`)"
        )
    return match.group(1), match.group(2)


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes, each known, none twice, in the canonical order.

    Raises:
        ConfigError: no scope, or one that is not in ``SCOPES``.
    """
    given = list(scopes)
    unknown = sorted({s for s in given if s not in SCOPES})
    if not given or unknown:
        raise ConfigError(f"scopes {unknown or '(none)'}: give one or more of {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in given)


def authorize(record: TokenRecord, scope: str) -> None:
    """Deny by default: the token must hold ``scope`` itself.

    Raises:
        PermissionDeniedError: it does not (the message names the scope needed, and the client).
    """
    if scope not in record.scopes:
        raise PermissionDeniedError(
            f"token {record.token_id} ({record.name}) lacks the scope {scope!r} this call needs (it has "
            f"{', '.join(record.scopes)}); ask the operator for a token with {scope!r}"
        )


class TokenStore:
    """Create, list, revoke and check tokens; records live in the store under ``access/tokens/``.

    ``cache_s``: how long a verified record is trusted before it is read again, in seconds (a
    revoked token stops working within that time; revoking through this object is immediate).
    """

    def __init__(self, store: ObjectStore, cache_s: float = 1.0) -> None:
        self.store = store
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, TokenRecord]] = {}

    def _key(self, token_id: str) -> str:
        return f"{_PREFIX}/{token_id}.json"

    def create(self, name: str, scopes: Iterable[str]) -> tuple[TokenRecord, str]:
        """A new token for the client ``name``; returns its record and the token text (shown once).

        Raises:
            ConfigError: a name that is not 1-100 of ``A-Z a-z 0-9 . _ -``, or bad scopes.
        """
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(
                "the token's name names the client in access logs: 1-100 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit (e.g. recsys-prod)"
            )
        chosen = check_scopes(scopes)
        while True:
            token_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
            record = TokenRecord(
                token_id=token_id,
                name=name,
                scopes=chosen,
                salt=salt,
                digest=_digest(salt, secret),
                created_at=utc_now(),
            )
            try:
                self.store.create_exclusive(self._key(token_id), record.model_dump_json().encode())
            except StorageConflictError:
                continue  # 48 random bits collided: draw again
            return record, f"{TOKEN_PREFIX}{token_id}_{secret}"

    def list(self) -> list[TokenRecord]:
        """Every token record, revoked ones included, oldest first."""
        records = [TokenRecord.model_validate_json(self.store.get(k)) for k in self.store.list_keys(_PREFIX)]
        return sorted(records, key=lambda r: r.created_at)

    def read(self, token_id: str) -> TokenRecord | None:
        key = self._key(token_id)
        if not re.fullmatch(r"[0-9a-f]{12}", token_id) or not self.store.exists(key):
            return None
        return TokenRecord.model_validate_json(self.store.get(key))

    def revoke(self, token_id: str) -> TokenRecord:
        """Revoke a token (its record stays, marked revoked); revoking twice keeps the first time.

        Raises:
            ConfigError: no token with that id (``expunge tokens list`` shows them).
        """
        record = self.read(token_id) if isinstance(token_id, str) else None
        if record is None:
            raise ConfigError(
                "no API token has that id (12 hex digits, not the token itself): `expunge tokens list` shows them"
            )
        if record.revoked_at is None:
            record = record.model_copy(update={"revoked_at": utc_now()})
            self.store.put(self._key(token_id), record.model_dump_json().encode())
        with self._lock:
            self._cache.pop(token_id, None)
        return record

    def authenticate(self, token: str) -> TokenRecord:
        """The record of a valid, unrevoked token.

        Raises:
            AuthenticationError: malformed, unknown, wrong secret or revoked (one message for all
                but malformed: the caller learns nothing about which ids exist).
        """
        token_id, secret = parse_token(token)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(token_id)
        record = cached[1] if cached is not None and now - cached[0] < self.cache_s else self.read(token_id)
        if record is None or not hmac.compare_digest(_digest(record.salt, secret), record.digest) or record.revoked_at:
            raise AuthenticationError(
                "the bearer token is unknown or revoked: ask the operator for a valid one "
                "(`expunge tokens create --scope ... --name <client>`)"
            )
        with self._lock:
            self._cache[token_id] = (now if cached is None or now - cached[0] >= self.cache_s else cached[0], record)
        return record
