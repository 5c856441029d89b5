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


def test_a_damaged_parquet_or_checkpoint_is_reported_unreadable_not_a_crash(tmp_path):
    store = ObjectStore(str(tmp_path / "store"))
    store.put("shards/0000/slices/0000-abc.parquet", b"PAR1 not really parquet")
    store.put("shards/0000/checkpoints/0000-abc.pt", b"not a checkpoint")
    report = scan_store(store, "user-9", "d" * 64)
    assert not report.clean  # what a damaged object holds cannot be told: never reported clean
    assert {(f.key.rsplit("/", 1)[-1], f.kind) for f in report.findings} == {
        ("0000-abc.parquet", "unreadable"),
        ("0000-abc.pt", "unreadable"),
    }


def test_the_journal_logs_operations_are_not_a_person_named_write(tmp_path):
    store = _store_with(tmp_path, "journal/log/00000001.json", {"sequence": 1, "op": "write", "key": "journal/x.json"})
    assert scan_store(store, "write", "d" * 64).clean


def test_a_write_under_way_is_not_a_trace_but_an_interrupted_one_is(tmp_path, monkeypatch):
    """CI on a loaded machine: `verify` beside a running service found the journal log's temporary
    object (an atomic write being fsynced) and reported it as a trace left behind."""
    store = ObjectStore(str(tmp_path / "store"))
    under_way = tmp_path / "store" / "journal" / "log" / ".00000015.json.ab12.partial"
    under_way.parent.mkdir(parents=True)
    under_way.write_text(json.dumps({"digests": ["d" * 64]}))
    exists = store.exists

    def writer_finishes_after_the_listing(key: str) -> bool:  # the rename that ends the atomic write
        if under_way.exists():
            under_way.rename(under_way.parent / "00000015.json")
        return exists(key)

    monkeypatch.setattr(store, "exists", writer_finishes_after_the_listing)
    report = scan_store(store, None, "e" * 64)
    assert [f for f in report.findings if f.kind == "incomplete-write"] == []
    (tmp_path / "store" / "journal" / "log" / ".00000016.json.cd34.partial").write_text("{}")
    left = scan_store(store, None, "e" * 64)
    assert [(f.key, f.kind) for f in left.findings] == [("journal/log/.00000016.json.cd34.partial", "incomplete-write")]
