"""A store delete says nothing at INFO: its callers (the purge, the lease) say what they deleted and why."""

from __future__ import annotations

import logging

from expunge.orchestrator.config import StorageConfig
from expunge.shards.store import ObjectStore


def test_a_delete_logs_its_count_at_debug_only(tmp_path, caplog):
    store = ObjectStore(StorageConfig(uri=str(tmp_path / "store")))
    store.put("placement/00000001.parquet", b"x")
    with caplog.at_level(logging.INFO, logger="expunge.shards.store"):
        assert len(store.delete(["placement/00000001.parquet"])) == 1
    assert not [r for r in caplog.records if r.name == "expunge.shards.store"]  # was a second, unexplained line
    store.put("placement/00000002.parquet", b"y")
    with caplog.at_level(logging.DEBUG, logger="expunge.shards.store"):
        store.delete(["placement/00000002.parquet"])
    assert any("deleted 1 object version(s)" in r.getMessage() for r in caplog.records)
