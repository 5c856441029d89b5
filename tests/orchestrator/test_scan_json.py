"""The storage scan reads JSON objects field by field: bookkeeping values never match a numeric id."""

from __future__ import annotations

import json

from expunge.orchestrator.evidence.scan import scan_store
from expunge.shards.store import ObjectStore


def _store_with(tmp_path, key: str, document: dict) -> ObjectStore:
    store = ObjectStore(str(tmp_path / "store"))
    store.put(key, json.dumps(document).encode())
    return store


def test_a_registry_version_equal_to_a_numeric_id_is_not_a_trace(tmp_path):
    store = _store_with(
        tmp_path, "journal/registered/req-1.json", {"registered_at": "2026-11-30", "registry_version": "2"}
    )
    assert scan_store(store, "2", "d" * 64).clean


def test_a_raw_id_in_free_text_fields_is_still_a_trace(tmp_path):
    store = _store_with(tmp_path, "journal/requests/req-1.json", {"request_id": "req-1", "reason": "2"})
    report = scan_store(store, "2", "d" * 64)
    assert not report.clean
    assert report.findings[0].key == "journal/requests/req-1.json"


def test_a_raw_id_as_a_key_is_a_trace(tmp_path):
    store = _store_with(tmp_path, "receipts/x.json", {"user-9": 3})
    assert not scan_store(store, "user-9", "d" * 64).clean
