"""The trace rule (pure): what is, and what is not, a trace of a person in text and in JSON fields."""

from __future__ import annotations

import pytest

from expunge.orchestrator.evidence.scan_outside import mlflow_value_searched
from expunge.orchestrator.evidence.trace_rule import (
    bounded_token_spans,
    holds_token,
    is_field_name,
    is_generated_field,
    is_number_text,
    json_paths_containing,
    json_traces,
    object_key_holds,
    object_name_holds,
    text_lines_holding,
)

EMAIL = "ann@example.org"


@pytest.mark.parametrize(
    ("text", "subject_id"),
    [
        ("1", "1"),
        ('{"subject": "1"}', "1"),
        ("erase user 1 please", "1"),
        ("id=1", "1"),
        ("subject:1", "1"),
        ("[1]", "1"),
        ("called about 1.", "1"),
        ("(0)", "0"),
        ("train", "train"),
        ("the train left", "train"),
        ("null", "null"),
        ("rows: see ticket", "rows"),
        ("id's", "id"),
        (EMAIL, EMAIL),
        (f"mailto:{EMAIL}", EMAIL),
        (f"<{EMAIL}>", EMAIL),
        (f"from {EMAIL}, by phone", EMAIL),
        (f"{EMAIL}.", EMAIL),
        ("zoe\u0308 asked", "zo\u00eb"),  # NFD text, NFC id: the same person under the identity rule
        ("GET /subjects/1 HTTP/1.1", "1"),
    ],
)
def test_a_whole_token_is_a_trace(text, subject_id):
    assert holds_token(text, subject_id)


@pytest.mark.parametrize(
    ("text", "subject_id"),
    [
        ("10", "1"),
        ("v1", "1"),
        ("1.5", "1"),
        ("req-1", "1"),
        ("user_1", "1"),
        ("18:52:1", "1"),
        ("1,000 rows", "1"),
        ("2026-12-01", "1"),
        ("0.02", "0"),
        ("trained", "train"),
        ("expunge.pipelines.train", "train"),
        ("train-v1", "train"),
        ("row(s)", "rows"),
        ("request_id", "id"),
        ("nullable", "null"),
        ("Train", "train"),  # case is kept, as the identity rule keeps it
        (f"b{EMAIL}", EMAIL),
        (f"{EMAIL}.uk", EMAIL),
        (f"x-{EMAIL}", EMAIL),
        ("", "1"),
        ("1", ""),
    ],
)
def test_part_of_another_token_or_number_is_not(text, subject_id):
    assert not holds_token(text, subject_id)


def test_spans_index_every_occurrence_and_lines_count_from_one():
    assert bounded_token_spans("1 v1 1", "1") == [(0, 1), (5, 6)]
    assert text_lines_holding(["start", "user 7 asked", "17 rows", "7"], "7") == [2, 4]


@pytest.mark.parametrize("key", ["rows", "id", "train", "null", "registry_version", "shard_0.slices_retrained"])
def test_a_key_shaped_like_a_field_name_is_schema(key):
    assert is_field_name(key)
    assert json_traces({key: 3}, key) == []


@pytest.mark.parametrize("key", ["1", "0", "user-9", EMAIL])
def test_any_other_key_is_data_and_named_by_position_only(key):
    assert not is_field_name(key)
    (path,) = json_traces({"a": 1, key: 3}, key)
    assert path == "$.<key 2> (the key itself)"  # its position, never its text


@pytest.mark.parametrize(
    ("name", "generated"),
    [
        ("registry_version_before", True),
        ("created_at", True),
        ("previous_receipt_sha256", True),
        ("subject_digests", True),
        ("expunge.kind", True),
        ("status", True),
        ("op", True),  # the journal log's operation: write or delete
        ("purpose", True),
        ("tracking_uri", True),
        ("reason", False),
        ("ticket", False),
        ("request_id", False),
        ("idempotency_key", False),
        ("error", False),
        ("pending", False),
        ("note", False),
        ("before", False),
    ],
)
def test_generated_fields_are_named_by_their_last_word(name, generated):
    assert is_generated_field(name) is generated


def test_json_numbers_and_generated_fields_are_never_traces_but_free_text_is():
    receipt = {
        "rows": 1,
        "rows_removed": 0,
        "registry_version_before": "1",
        "kind": "train",
        "purpose": "expunge train",
        "value": None,
        "flag": True,
        "shards": [{"shard": 0, "restarted_from": "shards/0000/checkpoints/0001-ab.pt"}],
        "reason": "customer 1 called; see train schedule",
        "deleted_objects": ["receipts/requests/train.json", "receipts/chain/00000001.json"],
    }
    assert json_traces(receipt, "1") == ["$.reason"]
    assert json_traces(receipt, "0") == []
    assert json_traces(receipt, "train") == ["$.reason", "$.deleted_objects[0]"]
    assert json_traces(receipt, "00000001") == []
    assert json_traces(receipt, "null") == []  # JSON null is not the text "null"
    assert json_traces({"reason": "null"}, "null") == ["$.reason"]


def test_an_object_key_is_searched_in_its_name_only():
    assert object_key_holds("shards/0000/slices/0001-ab12.parquet", "shards") is False
    assert object_key_holds("receipts/requests/ann@example.org.json", EMAIL) is True
    assert object_key_holds("journal/requests/req-1.json", "1") is False
    assert object_key_holds("not a key/at all", "a") is None
    assert object_key_holds("elsewhere/1.json", "1") is None


@pytest.mark.parametrize(
    ("key", "subject_id", "holds"),
    [
        ("receipts/requests/ann@example.org.json", EMAIL, True),
        ("journal/requests/case train.json", "train", True),
        ("receipts/chain/00000001.json", "00000001", False),  # a sequence number Expunge chose
        ("shards/0001/slices/0001-ab12cd.parquet", "0001", False),  # a content hash
        ("placement/57e7fef3.parquet", "57e7fef3", False),
    ],
)
def test_an_object_name_expunge_generates_is_not_searched(key, subject_id, holds):
    assert object_name_holds(key, subject_id) is holds


def test_the_digest_is_found_anywhere_with_its_path():
    digest = "ab" * 32
    document = {"layout": {"user_slices": [["x", digest]]}, f"expunge.subject_digest.{digest}": "erased"}
    assert json_paths_containing(document, digest) == [
        "$.layout.user_slices[0][1]",
        f"$.expunge.subject_digest.{digest} (the key itself)",
    ]


@pytest.mark.parametrize(
    ("key", "value", "searched"),
    [
        ("subjects", "1", False),  # a count, kept as text by MLflow
        ("affected_shards", "[0, 1]", False),
        ("learning_rate", "0.02", False),
        ("expunge.kind", "train", False),
        ("expunge.registry_version", "1", False),
        ("mlflow.user", "ann", False),
        ("mlflow.note.content", "asked by ann@example.org", True),
        ("request_id", "GDPR-1", True),
        ("expunge.reason", "by phone", True),
        ("note", "train", True),
        ("expunge.purged", "true", False),  # Expunge's flags and placeholders, not a person named "true"
        ("expunge.request_id", "none", False),
        ("expunge.request_id", "GDPR-1", True),
    ],
)
def test_mlflow_values_are_searched_unless_generated_mlflows_own_or_numbers(key, value, searched):
    assert mlflow_value_searched(key, value) is searched


@pytest.mark.parametrize(
    ("text", "number"),
    [("1", True), ("-2.5e3", True), ("[0, 1]", True), ("0,1", True), ("v1", False), ("", False), ("1 row", False)],
)
def test_numbers_as_text(text, number):
    assert is_number_text(text) is number
