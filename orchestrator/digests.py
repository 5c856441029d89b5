"""Keyed digests of subject ids (HMAC-SHA256): the only form in which a subject leaves shard data.

Every id is put in canonical form by the identity rule (``expunge.shards.identity``) before it is
digested, so every caller (training placement, erasure, scan, serving, the Python API)
gets the same digest for the same person.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from expunge.orchestrator.errors import ConfigError
from expunge.shards.identity import canonical_subject_id, canonical_subject_ids

if TYPE_CHECKING:
    from expunge.orchestrator.config import PrivacyConfig

__all__ = ["SubjectHasher", "key_weakness"]

_MIN_KEY_BYTES = 16
#: A configured key must carry at least this much entropy (32 bytes), estimated from its alphabet.
_MIN_KEY_BITS = 256
_HEX = frozenset("0123456789abcdefABCDEF")
_BASE64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_")
_MIN_DISTINCT = 10
_KEY_HINT = "export {env}=$(python -c 'import secrets;print(secrets.token_hex(32))')"


def key_weakness(value: str) -> str | None:
    """Why ``value`` is too weak to key subject digests, or None when it is strong enough (pure).

    Estimates entropy from the key's alphabet: 4 bits a character for hex, 6 for base64, 6.5
    for other printable text, and refuses fewer than 256 bits (``secrets.token_hex(32)`` has
    exactly 256), fewer than 10 distinct characters (a repeated pattern), and any whitespace
    (a pasted newline or space would silently make another key).
    """
    if value != value.strip() or any(ch.isspace() for ch in value):
        return "it contains whitespace (a trailing newline or a space pasted with it?)"
    if len(set(value)) < _MIN_DISTINCT:
        return f"it uses only {len(set(value))} distinct character(s): a repeated pattern, not a secret"
    chars = set(value)
    bits_per_char = 4.0 if chars <= _HEX else 6.0 if chars <= _BASE64 else 6.5
    bits = len(value) * bits_per_char
    if bits < _MIN_KEY_BITS:
        return f"it carries about {bits:.0f} bits of entropy; at least {_MIN_KEY_BITS} (32 random bytes) are needed"
    return None


class SubjectHasher:
    """Turns raw subject ids into stable keyed digests; never logs or stores the raw id."""

    def __init__(self, key: bytes) -> None:
        if len(key) < _MIN_KEY_BYTES:
            raise ConfigError(
                f"the subject digest key has {len(key)} bytes; use at least {_MIN_KEY_BYTES} "
                "(e.g. `export EXPUNGE_SUBJECT_KEY=$(python -c 'import secrets;print(secrets.token_hex(32))')`)"
            )
        self._key = key

    @classmethod
    def from_env(cls, env_name: str) -> SubjectHasher:
        """The key in environment variable ``env_name`` (ConfigError when unset or weak)."""
        value = os.environ.get(env_name)
        if not value:
            raise ConfigError(_missing_key(env_name, None))
        return cls._checked(value, f"environment variable {env_name}", env_name)

    @classmethod
    def from_settings(cls, privacy: PrivacyConfig) -> SubjectHasher:
        """The configured key: ``privacy.subject_key_env`` when that variable is set, else ``privacy.subject_key_file``.

        The file is how a process gets the key without it in its environment (a mounted Kubernetes
        Secret, or the 0600 file ``expunge serve`` writes for the service it starts); one trailing
        newline in it is ignored (``echo KEY > file``).

        Raises:
            ConfigError: neither gives a key (the message names both), the file cannot be read, or the key is weak.
        """
        env_name, key_file = privacy.subject_key_env, privacy.subject_key_file
        if os.environ.get(env_name):
            return cls.from_env(env_name)
        if not key_file:
            raise ConfigError(_missing_key(env_name, None))
        try:
            value = Path(key_file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(_missing_key(env_name, key_file)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read the subject digest key from privacy.subject_key_file {key_file} "
                f"({type(exc).__name__}: {exc.strerror if isinstance(exc, OSError) else 'not UTF-8 text'}) and "
                f"{env_name} is not set: make the file readable by this process's user, or set {env_name}"
            ) from None
        value = value.removesuffix("\n").removesuffix("\r")
        return cls._checked(value, f"privacy.subject_key_file {key_file}", env_name)

    @classmethod
    def _checked(cls, value: str, where: str, env_name: str) -> SubjectHasher:
        weakness = key_weakness(value)
        if weakness is not None:
            raise ConfigError(
                f"the subject digest key in {where} is too weak: {weakness}. Digests of a weak key can be "
                f"reversed by trying likely ids. Use a fresh random key: `{_KEY_HINT.format(env=env_name)}` "
                "(for a store already trained, keep its key: retrain into a new store to change it). Nothing was changed."
            )
        return cls(value.encode())

    def digest(self, subject_id: object) -> str:
        """The digest of the person ``subject_id`` names (``InvalidSubjectIdError`` if refused)."""
        return self._hmac(canonical_subject_id(subject_id))

    def _hmac(self, canonical_id: str) -> str:
        return hmac.new(self._key, canonical_id.encode(), hashlib.sha256).hexdigest()

    def label(self, text: str, purpose: str) -> str:
        """Keyed digest of free text for ``purpose`` (e.g. an idempotency key): hex, 64 characters.

        Domain-separated from subject digests, so a text equal to a subject id never yields
        that subject's digest.
        """
        return hmac.new(self._key, f"expunge/{purpose}/{text}".encode(), hashlib.sha256).hexdigest()

    def key_check(self) -> str:
        """A value that tells keys apart without revealing them (stored with each version)."""
        return hmac.new(self._key, b"expunge/key-check", hashlib.sha256).hexdigest()[:16]

    def digest_many(self, subject_ids: Iterable[object]) -> list[str]:
        """Digests in order; every refused id is listed in one ``InvalidSubjectIdError``."""
        canonical_ids = canonical_subject_ids(subject_ids, "the request")
        digests = {c: self._hmac(c) for c in dict.fromkeys(canonical_ids)}  # one HMAC per person, not per row
        return [digests[c] for c in canonical_ids]

    def __repr__(self) -> str:  # never show the key
        return "SubjectHasher(key=<redacted>)"


def _missing_key(env_name: str, key_file: str | None) -> str:
    where = (
        f"environment variable {env_name} is not set and privacy.subject_key_file {key_file} does not exist"
        if key_file
        else f"environment variable {env_name} is not set (nor privacy.subject_key_file)"
    )
    return (
        f"{where}; one of them holds the HMAC key for subject digests. For a store already trained, set "
        f"{env_name} to the key it was trained with (another key finds nobody). For a new store, make a random "
        f"secret of 64 hex characters (32 bytes), e.g. `{_KEY_HINT.format(env=env_name)}`, or name a file "
        "holding it in privacy.subject_key_file (a mounted secret), and keep the key stable: changing it makes "
        "earlier digests unmatchable."
    )
