from __future__ import annotations

import pickle

import pytest

from orchestrator.digests import SubjectHasher
from orchestrator.errors import (
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
    with pytest.raises(ConfigError, match="at least 16"):
        SubjectHasher.from_env("EXPUNGE_TEST_KEY")
    monkeypatch.setenv("EXPUNGE_TEST_KEY", "x" * 40)
    assert SubjectHasher.from_env("EXPUNGE_TEST_KEY").digest("a") == SubjectHasher(b"x" * 40).digest("a")
