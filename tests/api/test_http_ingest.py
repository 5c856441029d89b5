"""``POST /v1/ingestions`` over a real service on loopback, and ``Client.ingest``: scope, rows, erased people, logs."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

from expunge.client import Client, Ingestion
from expunge.client.models import MAX_INGEST_ROWS
from expunge.orchestrator.errors import DataValidationError, PermissionDeniedError
from tests.api.conftest import SUBJECTS, Served, serving

NEWCOMER = "newcomer-secret-4711"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("ingest"), window_ms=0) as running:
        yield running


def _rows(subject: str, prefix: str, items: range) -> dict[str, list[object]]:
    return {
        "record_id": [f"{prefix}-{i}" for i in items],
        "subject_id": [subject] * len(items),
        "item_id": list(items),
        "rating": [4] * len(items),  # JSON integers: stored as the float ratings training reads
    }


def _version(client: httpx.Client) -> int:
    version: int = client.get("/v1/healthz").json()["ensemble_version"]
    return version


def _files(store: Path) -> list[str]:
    """Every object of the store but the lease's, which the service renews while it runs."""
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file() and p.parent.name != "lease")


def test_ingest_adds_rows_serves_a_new_subject_and_the_same_body_twice_adds_nothing(served: Served, caplog):
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="expunge")
    body = {"rows": _rows(NEWCOMER, "fresh", range(4)), "request_id": "daily-2026-12-04"}
    with served.client(served.token("ingest", "recommend", name="ingest-job")) as client:
        before = _version(client)
        assert client.post("/v1/recommendations", json={"subject_id": NEWCOMER, "k": 3}).status_code == 404
        answer = client.post("/v1/ingestions", json=body)
        assert answer.status_code == 200, answer.text
        added = answer.json()
        assert added["status"] == "ingested"
        assert (added["rows_in_batch"], added["rows_added"], added["new_subjects"]) == (4, 4, 1)
        assert added["model_version_before"] == before
        assert added["model_version_after"] == _version(client) == before + 1
        assert len(added["batch_digest"]) == 64
        assert added["shards_retrained"]
        recommended = client.post("/v1/recommendations", json={"subject_id": NEWCOMER, "k": 3})
        assert recommended.status_code == 200, recommended.text
        assert len(recommended.json()["items"]) == 3
        # The same body again (a retry): the first answer, and nothing new in the store.
        again = client.post("/v1/ingestions", json=body)
        assert again.status_code == 200, again.text
        assert again.json() == added
        # Without its request id: nothing new, counted.
        unnamed = client.post("/v1/ingestions", json={"rows": body["rows"]}).json()
        assert (unnamed["status"], unnamed["rows_already_stored"], unnamed["rows_added"]) == ("nothing_new", 4, 0)
        # Its request id with other rows: refused, nothing changed.
        conflict = client.post("/v1/ingestions", json={**body, "rows": _rows("someone-else", "other", range(2))})
        assert conflict.status_code == 409
        assert conflict.json()["code"] == "IdempotencyConflictError"
        assert _version(client) == before + 1
    for answer_text in (answer.text, again.text):
        assert NEWCOMER not in answer_text
    lines = [r.getMessage() for r in caplog.records if r.name == "expunge.access"]
    assert any("client=ingest-job POST /v1/ingestions 200" in line for line in lines), lines
    assert any(f"request={added['request_id']}" in line for line in lines), lines
    # Every record of the server's process: the body's subject id is personal data, never logged.
    everything = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    assert NEWCOMER not in everything


def test_a_token_without_the_ingest_scope_is_403_and_changes_nothing(served: Served):
    with served.client(served.token("recommend", "erasure:submit", "admin")) as client:
        before = _version(client)
        answer = client.post("/v1/ingestions", json={"rows": _rows("denied-person", "denied", range(2))})
        assert answer.status_code == 403
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["code"] == "PermissionDeniedError"
        assert "'ingest'" in answer.json()["detail"]
        assert _version(client) == before


def test_bad_rows_are_422_listing_every_problem_and_nothing_is_written(served: Served):
    token = served.token("ingest")
    before = _files(served.store)
    bad = {
        "record_id": ["a", "a", "b"],
        "subject_id": ["u-1", "  ", "u-2"],
        "item_id": [1, 2, 999],
        "rating": [1.0, 9.5, 3.0],
        "email": ["jane@example.com", "y", "z"],
    }
    with served.client(token) as client:
        answer = client.post("/v1/ingestions", json={"rows": bad})
        assert answer.status_code == 422, answer.text
        problem = answer.json()
        assert problem["code"] == "DataValidationError"
        assert problem["detail"].startswith("5 problem(s)"), problem["detail"]
        for expected in ("unknown column(s) ['email']", "duplicate record_id", "empty subject_id", "item_id",
                         "rating range"):  # fmt: skip
            assert expected in problem["detail"], problem["detail"]
        assert "jane@example.com" not in answer.text
        # Values a column cannot hold: the column is named, never its values (they may be ids).
        mixed = client.post(
            "/v1/ingestions", json={"rows": {**_rows("x", "m", range(2)), "subject_id": [NEWCOMER, 2.5]}}
        )
        assert mixed.status_code == 422, mixed.text
        assert "column 'subject_id'" in mixed.json()["detail"]
        assert NEWCOMER not in mixed.text
        unequal = client.post("/v1/ingestions", json={"rows": {**_rows("x", "u", range(2)), "rating": [3.0]}})
        assert unequal.status_code == 422
        assert "different lengths" in unequal.json()["detail"]
        too_many = client.post("/v1/ingestions", json={"rows": {"record_id": ["r"] * (MAX_INGEST_ROWS + 1)}})
        assert too_many.status_code == 413
        assert "send it in parts" in too_many.json()["detail"]
        shape = client.post("/v1/ingestions", json={"rows": [{"record_id": "r"}]})
        assert shape.status_code == 400
    assert _files(served.store) == before


def test_rows_of_an_erased_subject_are_refused_and_counted(served: Served):
    erased = SUBJECTS[1]
    with served.client(served.token("erasure:submit", "erasure:read", "ingest", "recommend")) as client:
        request_id = client.post("/v1/erasures", json={"subject_ids": [erased]}).json()["request_id"]
        deadline = time.monotonic() + 120
        while client.get(f"/v1/erasures/{request_id}").json()["stage"] == "accepted":
            assert time.monotonic() < deadline, "the erasure did not commit"
            time.sleep(0.05)
        rows = _rows(erased, "back", range(5))
        for name, values in _rows("another-newcomer", "other", range(3)).items():
            rows[name] = rows[name] + values
        answer = client.post("/v1/ingestions", json={"rows": rows})
        assert answer.status_code == 200, answer.text
        added = answer.json()
        assert (added["rows_refused_erased"], added["subjects_refused_erased"]) == (5, 1)
        assert (added["rows_added"], added["new_subjects"]) == (3, 1)
        assert erased not in answer.text
        assert client.post("/v1/recommendations", json={"subject_id": erased}).status_code == 404


def test_the_sdk_ingests_a_table_or_columns_and_raises_typed_errors(served: Served):
    with Client(served.url, served.token("ingest"), retry_s=0) as client:
        table = pa.table({"record_id": ["sdk-1", "sdk-2"], "subject_id": ["sdk-person", "sdk-person"],
                          "item_id": pa.array([1, 2], pa.int64()), "rating": pa.array([3.5, 4.0], pa.float32())})  # fmt: skip
        added = client.ingest(table, request_id="sdk-batch-1")
        assert isinstance(added, Ingestion)
        assert (added.status, added.rows_added, added.request_id) == ("ingested", 2, "sdk-batch-1")
        assert client.ingest(table, request_id="sdk-batch-1") == added  # a retry: the first answer
        columns = client.ingest({"record_id": ["sdk-1"], "subject_id": ["sdk-person"], "item_id": [1], "rating": [3.5]})
        assert (columns.status, columns.rows_already_stored) == ("nothing_new", 1)
        with pytest.raises(DataValidationError, match="rating range"):
            client.ingest({"record_id": ["sdk-3"], "subject_id": ["sdk-person"], "item_id": [1], "rating": [7.0]})
        with pytest.raises(DataValidationError, match="NaN or infinite"):  # refused before it is sent
            client.ingest({"record_id": ["sdk-4"], "subject_id": ["p"], "item_id": [1], "rating": [float("nan")]})
    with Client(served.url, served.token("recommend"), retry_s=0) as reader, pytest.raises(PermissionDeniedError):
        reader.ingest({"record_id": ["sdk-5"], "subject_id": ["p"], "item_id": [1], "rating": [3.0]})
