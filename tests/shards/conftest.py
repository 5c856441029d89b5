"""Fixtures shared by the shard tests."""

from __future__ import annotations

import pytest

from expunge.shards.store import ObjectStore


@pytest.fixture
def slice_reads(monkeypatch) -> list[str]:
    """The slice keys read from any store from now on (a warm shard should read none)."""
    reads: list[str] = []
    original = ObjectStore.get

    def get(self, key, *args, **kwargs):
        if "/slices/" in key:
            reads.append(key)
        return original(self, key, *args, **kwargs)

    monkeypatch.setattr(ObjectStore, "get", get)
    return reads
