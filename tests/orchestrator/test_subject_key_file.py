"""SubjectHasher.from_settings: the key from its environment variable, else from privacy.subject_key_file."""

from __future__ import annotations

import pytest

from expunge.orchestrator.config import PrivacyConfig
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError

KEY = "3f9c2b7e1d8a4f6052c7e9b1a3d5f7082e4c6a8b0d2f4e6a8c0e2a4c6e8a0c2e"
OTHER = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9b"
ENV = "EXPUNGE_TEST_KEY_FILE_KEY"


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


def _privacy(key_file=None) -> PrivacyConfig:
    return PrivacyConfig(subject_key_env=ENV, subject_key_file=str(key_file) if key_file else None)


@pytest.mark.parametrize("written", [KEY, KEY + "\n", KEY + "\r\n"])  # `echo KEY > file` adds a newline
def test_the_key_file_gives_the_key_when_the_variable_is_unset(tmp_path, written):
    key_file = tmp_path / "subject.key"
    key_file.write_text(written)
    assert SubjectHasher.from_settings(_privacy(key_file)).key_check() == SubjectHasher(KEY.encode()).key_check()


def test_the_variable_wins_over_the_file(tmp_path, monkeypatch):
    key_file = tmp_path / "subject.key"
    key_file.write_text(OTHER)
    monkeypatch.setenv(ENV, KEY)
    assert SubjectHasher.from_settings(_privacy(key_file)).key_check() == SubjectHasher(KEY.encode()).key_check()


def test_without_either_the_error_names_both(tmp_path):
    with pytest.raises(ConfigError) as missing:
        SubjectHasher.from_settings(_privacy(tmp_path / "absent.key"))
    message = str(missing.value)
    assert ENV in message
    assert f"privacy.subject_key_file {tmp_path / 'absent.key'} does not exist" in message
    with pytest.raises(ConfigError, match=r"nor privacy\.subject_key_file"):
        SubjectHasher.from_settings(_privacy())


def test_a_weak_or_unreadable_key_file_is_refused_without_showing_the_key(tmp_path):
    weak = tmp_path / "weak.key"
    weak.write_text("0123456789abcdef0123456789abcdef")
    with pytest.raises(ConfigError, match="too weak") as refused:
        SubjectHasher.from_settings(_privacy(weak))
    assert str(weak) in str(refused.value)
    assert "0123456789abcdef0123456789abcdef" not in str(refused.value)
    with pytest.raises(ConfigError, match="cannot read"):
        SubjectHasher.from_settings(_privacy(tmp_path))  # a folder, not a file
    binary = tmp_path / "binary.key"
    binary.write_bytes(b"\xff\xfe" * 40)
    with pytest.raises(ConfigError, match="not UTF-8"):
        SubjectHasher.from_settings(_privacy(binary))
