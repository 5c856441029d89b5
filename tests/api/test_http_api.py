"""The HTTP API over a real service on loopback: tokens and scopes, idempotency, the GDPR clock, problems, metrics."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.api.conftest import SUBJECTS, Served, serving


def _journal_requests(served: Served) -> set[str]:
    return served.service.journal.ids("requests")


def _until_done(client, ref: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/v1/erasures/{ref}").json()
        if body["state"] in ("done", "failed") or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_no_token_is_401_with_a_problem_and_changes_nothing(served: Served):
    before = _journal_requests(served)
    with served.client(None) as anonymous:
        answer = anonymous.post("/v1/erasures", json={"subject_ids": [SUBJECTS[0]]})
    assert answer.status_code == 401
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.headers["www-authenticate"].startswith("Bearer")
    problem = answer.json()
    assert problem["status"] == 401
    assert problem["code"] == "AuthenticationError"
    assert "expunge tokens create" in problem["detail"]
    with served.client("exp_000000000000_" + "A" * 43) as forged:
        assert forged.get("/v1/erasures").status_code == 401
    assert _journal_requests(served) == before


def test_a_read_token_cannot_submit_403_and_nothing_is_stored(served: Served):
    before = _journal_requests(served)
    with served.client(served.token("erasure:read")) as reader:
        answer = reader.post("/v1/erasures", json={"subject_ids": [SUBJECTS[0]], "idempotency_key": "K-403"})
        assert answer.status_code == 403
        assert answer.json()["code"] == "PermissionDeniedError"
        assert "erasure:submit" in answer.json()["detail"]
        assert reader.post("/v1/readmissions", json={"subject_ids": [1], "reason": "consent"}).status_code == 403
    assert _journal_requests(served) == before


def test_submit_is_202_then_done_and_found_by_id_key_and_ticket(served: Served):
    with served.client(served.token("erasure:submit", "erasure:read", "evidence:read")) as client:
        body = {"subject_ids": [SUBJECTS[1]], "idempotency_key": "GDPR-2026-0042", "ticket": "DESK/2026/77"}
        first = client.post("/v1/erasures", json=body)
        assert first.status_code == 202, first.text
        accepted = first.json()
        assert accepted["status_url"].endswith(f"/v1/erasures/{accepted['request_id']}")
        assert first.headers["location"] == accepted["status_url"]
        again = client.post("/v1/erasures", json=body)  # a retry: the same request, nothing new
        assert again.status_code == 202
        assert again.json()["request_id"] == accepted["request_id"]
        conflict = client.post("/v1/erasures", json={**body, "subject_ids": [SUBJECTS[2]]})
        assert conflict.status_code == 409
        assert conflict.json()["code"] == "IdempotencyConflictError"
        done = _until_done(client, accepted["request_id"])
        assert done["state"] == "done", done
        assert done["rows_removed"] == 5
        assert done["ticket"] == "DESK/2026/77"
        assert done["late"] is False
        assert done["done_at"]
        assert done["due_at"] > done["received_at"]
        assert done["batch_id"] is None  # committed alone
        assert client.get("/v1/erasures/GDPR-2026-0042").json()["request_id"] == accepted["request_id"]
        # A ticket with slashes (as desks number them) is still one path segment's worth of reference.
        assert client.get("/v1/erasures/DESK/2026/77").json()["request_id"] == accepted["request_id"]
        assert client.get("/v1/erasures/DESK%2F2026%2F77").json()["request_id"] == accepted["request_id"]
        assert client.get("/v1/erasures/DESK/2026/77/evidence").status_code == 200
        missing = client.get("/v1/erasures/no-such-thing")
        assert missing.status_code == 404
        assert missing.json()["code"] == "UnknownRequestError"
        evidence = client.get(done["evidence_url"])
        assert evidence.status_code == 200, evidence.text
        assert evidence.json()["status"] == "passed"
        assert evidence.json()["request_id"] == accepted["request_id"]
    assert served.service.stats().batches >= 1


def test_bad_input_is_400_and_stores_nothing(served: Served):
    before = _journal_requests(served)
    with served.client(served.token("erasure:submit")) as client:
        for body, code in [
            ({"subject_ids": [True]}, "ConfigError"),  # never coerced to 1
            ({"subject_ids": [1.0]}, "ConfigError"),
            ({"subject_ids": []}, "ConfigError"),
            ({"subject_ids": ["  "]}, "InvalidSubjectIdError"),
            ({"subject_ids": [SUBJECTS[3]], "reason": "asked by jane@example.com"}, "PersonalDataInTextError"),
            ({"subject_ids": [SUBJECTS[3]], "reason": f"erase {SUBJECTS[3]} please"}, "PersonalDataInTextError"),
            ({"subject_ids": [SUBJECTS[3]], "ticket": "call +44 20 7946 0958"}, "PersonalDataInTextError"),
            ({"subject_ids": [SUBJECTS[3]], "received_at": "2999-01-01"}, "ConfigError"),
            ({"subject_ids": [SUBJECTS[3]], "surprise": 1}, "ConfigError"),
        ]:
            answer = client.post("/v1/erasures", json=body)
            assert answer.status_code == 400, (body, answer.text)
            assert answer.json()["code"] == code, (body, answer.json())
            assert "jane@example.com" not in answer.text
            assert "7946" not in answer.text
    assert _journal_requests(served) == before


def test_recommend_scope_serves_and_an_unknown_subject_is_404(served: Served):
    with served.client(served.token("recommend")) as client:
        answer = client.post("/v1/recommendations", json={"subject_id": SUBJECTS[-1], "k": 3})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["items"]) == 3
        predictions = client.post("/v1/predictions", json={"rows": [{"subject_id": SUBJECTS[-1], "item_id": 1}]})
        assert predictions.status_code == 200, predictions.text
        assert len(predictions.json()["predictions"]) == 1
        unknown = client.post("/v1/recommendations", json={"subject_id": "nobody-at-all"})
        assert unknown.status_code == 404
        assert unknown.json()["code"] == "UnknownSubjectError"
        assert client.get("/v1/erasures").status_code == 403


def test_a_revoked_token_stops_working(served: Served):
    token = served.token("erasure:read")
    with served.client(token) as client:
        assert client.get("/v1/erasures").status_code == 200
        served.server.tokens.revoke(token.split("_")[1])
        assert client.get("/v1/erasures").status_code == 401


def test_openapi_healthz_and_metrics_need_no_token_and_name_the_routes(served: Served):
    with served.client(None) as client:
        paths = client.get("/openapi.json").json()["paths"]
        for route in ("/v1/erasures", "/v1/erasures/{ref}", "/v1/erasures/{ref}/evidence", "/v1/recommendations",
                      "/v1/predictions", "/v1/readmissions", "/v1/healthz", "/v1/tokens"):  # fmt: skip
            assert route in paths, route
        assert client.get("/v1/healthz").json()["status"] == "ok"
        metrics = client.get("/metrics").text
    for name in ("expunge_queue_depth", "expunge_pending_purges", 'expunge_requests{state="late"}',
                 "expunge_request_stage_seconds_bucket", "expunge_http_requests_total"):  # fmt: skip
        assert name in metrics, name


def test_the_access_log_names_the_client_and_never_an_id_key_or_ticket(served: Served, caplog):
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="expunge")  # an in-process CLI test before may have set it to WARNING
    subject = SUBJECTS[4]
    with served.client(served.token("erasure:submit", "erasure:read", name="recsys-prod")) as client:
        accepted = client.post(
            "/v1/erasures", json={"subject_ids": [subject], "idempotency_key": "KEY-SECRET-9", "ticket": "TKT-SECRET-9"}
        ).json()
        client.get("/v1/erasures/KEY-SECRET-9")
        _until_done(client, accepted["request_id"])
    lines = [r.getMessage() for r in caplog.records if r.name == "expunge.access"]
    assert any("client=recsys-prod POST /v1/erasures 202" in line for line in lines), lines
    assert any(f"request={accepted['request_id']}" in line and "/v1/erasures/{ref}" in line for line in lines)
    # Every record of the server's process (the test's own HTTP client, httpx, logs its URLs: not the server's).
    everything = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    for secret in (subject, "KEY-SECRET-9", "TKT-SECRET-9"):
        assert secret not in everything


def test_requests_coalesced_into_one_commit_show_its_batch_id(tmp_path):
    # The receipt named the batch; the HTTP view did not, so a caller could not tell which requests
    # shared a store version, an MLflow run and a receipt-log entry.
    with (
        serving(tmp_path, window_ms=3_000) as served,
        served.client(served.token("erasure:submit", "erasure:read")) as client,
    ):
        ids = [client.post("/v1/erasures", json={"subject_ids": [s]}).json()["request_id"] for s in SUBJECTS[6:8]]
        views = [_until_done(client, ref) for ref in ids]
    assert [v["state"] for v in views] == ["done", "done"], views
    assert views[0]["model_version"] == views[1]["model_version"]
    assert views[0]["batch_id"] == views[1]["batch_id"]
    assert views[0]["batch_id"].startswith("batch-")


def test_a_late_request_is_listed_exported_and_counted(tmp_path):
    # A long coalescing window keeps the request pending; it was received two months ago (a backlog import).
    with serving(tmp_path, window_ms=60_000) as served:
        received = (datetime.now(UTC) - timedelta(days=62)).date().isoformat()
        with served.client(served.token("erasure:submit", "erasure:read")) as client:
            accepted = client.post(
                "/v1/erasures", json={"subject_ids": [SUBJECTS[5]], "ticket": "OLD-1", "received_at": received}
            )
            assert accepted.status_code == 202, accepted.text
            late = client.get("/v1/erasures", params={"state": "late"}).json()
            assert [v["ticket"] for v in late["items"]] == ["OLD-1"]
            assert late["items"][0]["late"] is True
            assert late["items"][0]["received_at"].startswith(received)
            assert client.get("/v1/erasures", params={"state": "done"}).json()["count"] == 0
            soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
            assert client.get("/v1/erasures", params={"due_before": soon}).json()["count"] == 1
            too_late = client.post(f"/v1/erasures/{accepted.json()['request_id']}/extension",
                                   json={"months": 1, "reason": "complex request"})  # fmt: skip
            assert too_late.status_code == 400
            assert "first month" in too_late.json()["detail"]
            metrics = client.get("/metrics").text
        assert 'expunge_requests{state="late"} 1' in metrics


@pytest.mark.parametrize("months", [1, 2])
def test_an_extension_moves_the_due_date_by_calendar_months(served: Served, months):
    with served.client(served.token("erasure:submit", "erasure:read")) as client:
        received = (datetime.now(UTC) - timedelta(days=3)).replace(microsecond=0)
        request_id = client.post(
            "/v1/erasures",
            json={"subject_ids": [SUBJECTS[6 + months]], "received_at": received.isoformat()},
        ).json()["request_id"]
        answer = client.post(f"/v1/erasures/{request_id}/extension", json={"months": months, "reason": "complex"})
        if answer.status_code == 400:  # done before the extension: allowed only while the clock runs
            assert "no deadline left" in answer.json()["detail"]
            return
        assert answer.status_code == 200, answer.text
        view = answer.json()
        assert view["extension"]["months"] == months
        due = datetime.fromisoformat(view["due_at"])
        assert (due.year * 12 + due.month) - (received.year * 12 + received.month) == 1 + months


def test_answers_are_not_held_back_by_nagle(served: Served):
    # asyncio sets TCP_NODELAY on accepted connections only when the listening socket says TCP;
    # without it each answer waited ~40 ms for the client's delayed ACK (headers and body are two writes).
    import socket

    assert served.server.socket is not None
    assert served.server.socket.proto == socket.IPPROTO_TCP


def test_a_body_too_large_or_of_unknown_length_is_refused_unread(served: Served):
    from expunge.orchestrator.api.app import MAX_BODY_BYTES

    before = _journal_requests(served)
    with served.client(served.token("erasure:submit")) as client:
        huge = client.post(
            "/v1/erasures", content=b"{" + b" " * MAX_BODY_BYTES + b"}", headers={"Content-Type": "application/json"}
        )
        assert huge.status_code == 413
        assert huge.json()["code"] == "ConfigError"

        def chunks():
            yield b'{"subject_ids": ["x"]}'

        unknown = client.post("/v1/erasures", content=chunks(), headers={"Content-Type": "application/json"})
        assert unknown.status_code == 411
    assert _journal_requests(served) == before
