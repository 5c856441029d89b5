from __future__ import annotations

import pickle

import pytest

from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import (
    ConfigError,
    DataValidationError,
    ExpungeError,
    ShardRetrainFailed,
    StorageConflictError,
    StorageCorruptError,
    UnknownSubjectError,
)


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("set X"),
        DataValidationError("file.parquet", ["a", "b"]),
        ShardRetrainFailed(3, "OOM"),
        StorageConflictError("v2 exists"),
        StorageCorruptError("missing"),
        UnknownSubjectError("who"),
    ],
)
def test_errors_survive_pickling_across_processes(error):
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert str(clone) == str(error)
    assert isinstance(clone, ExpungeError)


def test_digests_are_keyed_stable_and_never_reveal_the_key():
    one, other = SubjectHasher(b"k" * 32), SubjectHasher(b"j" * 32)
    assert one.digest("alice") == one.digest("alice")
    assert one.digest("alice") != other.digest("alice")
    assert "alice" not in one.digest("alice")
    assert "kkkk" not in repr(one)


def test_key_comes_from_the_environment_with_a_fix_in_the_message(monkeypatch):
    monkeypatch.delenv("EXPUNGE_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="export EXPUNGE_TEST_KEY"):
        SubjectHasher.from_env("EXPUNGE_TEST_KEY")
    monkeypatch.setenv("EXPUNGE_TEST_KEY", "short")
    with pytest.raises(ConfigError, match="too weak"):
        SubjectHasher.from_env("EXPUNGE_TEST_KEY")
    monkeypatch.setenv("EXPUNGE_TEST_KEY", "3f9c2b7e1d8a4f6052c7e9b1a3d5f7082e4c6a8b0d2f4e6a8c0e2a4c6e8a0c2e")
    assert SubjectHasher.from_env("EXPUNGE_TEST_KEY").digest("a") == SubjectHasher(
        b"3f9c2b7e1d8a4f6052c7e9b1a3d5f7082e4c6a8b0d2f4e6a8c0e2a4c6e8a0c2e"
    ).digest("a")


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("k" * 64, "distinct"),  # a repeated pattern
        ("0123456789abcdef0123456789abcdef", "128 bits"),  # token_hex(16): half the entropy needed
        ("3f9c2b7e1d8a4f6052c7e9b1a3d5f7082e4c6a8b0d2f4e6a8c0e2a4c6e8a0c2e\n", "whitespace"),  # echo's newline
        (" 3f9c2b7e1d8a4f6052c7e9b1a3d5f7082e4c6a8b0d2f4e6a8c0e2a4c6e8a0c2e", "whitespace"),
        ("correct horse battery staple", "whitespace"),
    ],
)
def test_weak_keys_from_the_environment_are_refused_with_a_fix(monkeypatch, key, why):
    monkeypatch.setenv("EXPUNGE_TEST_KEY", key)
    with pytest.raises(ConfigError, match="too weak") as error:
        SubjectHasher.from_env("EXPUNGE_TEST_KEY")
    assert why in str(error.value)
    assert "token_hex(32)" in str(error.value)
    assert key.strip() not in str(error.value)  # the message never shows the key


def test_generated_keys_are_strong():
    import secrets

    from expunge.orchestrator.digests import key_weakness

    assert all(key_weakness(secrets.token_hex(32)) is None for _ in range(200))
    assert all(key_weakness(secrets.token_urlsafe(32)) is None for _ in range(200))
