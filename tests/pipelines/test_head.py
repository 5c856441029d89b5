"""The head ``expunge serve`` starts: it works on a machine where no Ray program ever ran."""

import pytest

from expunge.pipelines._head import start_head, stop_head


@pytest.mark.integration
def test_a_head_starts_where_no_ray_token_exists_yet(tmp_path, monkeypatch):
    # A fresh machine: no ~/.ray/auth_token. `ray start` with token auth refused to start
    # (and `expunge serve` failed) until some other Ray program had created one.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    info = start_head(num_cpus=1)
    try:
        token = tmp_path / ".ray" / "auth_token"
        assert token.is_file()
        assert token.read_text().strip()
    finally:
        stop_head(info)
