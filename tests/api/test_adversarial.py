"""Faults an adversarial review found in the HTTP API, each with the behaviour that fixes it."""

from __future__ import annotations

import json

import httpx

from tests.api.conftest import SUBJECTS, Served


def test_a_caller_without_a_valid_token_is_refused_before_its_body_is_read(served: Served):
    before = served.service.journal.ids("requests")
    body = b'{"rows": [' + b'{"subject_id": "x", "item_id": 1},' * 200_000 + b'{"subject_id": "x", "item_id": 1}]}'
    with served.client(None) as anonymous:
        answer = anonymous.post("/v1/predictions", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 401  # not 400 (parsed) nor 200
    with served.client("exp_000000000000_" + "A" * 43) as forged:
        assert forged.post("/v1/erasures", content=b"not json at all").status_code == 401
    with served.client(served.token("erasure:submit")) as client:  # other routes take small bodies only
        big = client.post(
            "/v1/erasures", content=b"{" + b" " * 2_000_000 + b"}", headers={"Content-Type": "application/json"}
        )
        assert big.status_code == 413
    assert served.service.journal.ids("requests") == before


def test_invented_http_methods_do_not_grow_the_metrics(served: Served):
    with httpx.Client(base_url=served.url) as raw:
        for n in range(30):
            raw.request(f"X{n}WEIRD", "/nothing")
        metrics = raw.get("/metrics").text
    assert "WEIRD" not in metrics
    assert 'method="other"' in metrics


def test_a_refused_resubmission_leaves_the_ticket_index_alone(served: Served):
    with served.client(served.token("erasure:submit", "erasure:read")) as client:
        body = {"subject_ids": [SUBJECTS[10]], "idempotency_key": "victim-key", "ticket": "VICTIM-1"}
        assert client.post("/v1/erasures", json=body).status_code == 202
        stolen = client.post("/v1/erasures", json={**body, "subject_ids": [SUBJECTS[11]], "ticket": "ATTACKER-9"})
        assert stolen.status_code == 409
        renamed = client.post("/v1/erasures", json={**body, "ticket": "OTHER-2"})  # a retry: its ticket is ignored
        assert renamed.status_code == 202
        assert client.get("/v1/erasures", params={"ticket": "ATTACKER-9"}).json()["count"] == 0
        assert client.get("/v1/erasures", params={"ticket": "OTHER-2"}).json()["count"] == 0
        assert client.get("/v1/erasures/ATTACKER-9").status_code == 404
        assert client.get("/v1/erasures", params={"ticket": "VICTIM-1"}).json()["count"] == 1


def test_a_key_that_is_another_requests_ticket_is_ambiguous_not_a_takeover(served: Served):
    with served.client(served.token("erasure:submit", "erasure:read")) as client:
        first = client.post("/v1/erasures", json={"subject_ids": [SUBJECTS[12]], "ticket": "CASE-555"}).json()
        client.post("/v1/erasures", json={"subject_ids": [SUBJECTS[13]], "idempotency_key": "CASE-555"})
        answer = client.get("/v1/erasures/CASE-555")
        assert answer.status_code == 400
        assert first["request_id"] in answer.json()["detail"]
        assert client.get(f"/v1/erasures/{first['request_id']}").status_code == 200


def test_extreme_dates_and_sub_resource_suffixes_are_bad_input_not_500(served: Served):
    with served.client(served.token("erasure:submit", "erasure:read")) as client:
        for received in ("0001-01-01T00:30:00+01:00", "9999-12-31T23:59:00-01:00", "0001-01-01", "2018-05-24"):
            answer = client.post("/v1/erasures", json={"subject_ids": [SUBJECTS[14]], "received_at": received})
            assert answer.status_code == 400, (received, answer.text)
        listed = client.get("/v1/erasures", params={"due_before": "0001-01-01T00:00:00+01:00"})
        assert listed.status_code == 400
        for body in ({"ticket": "CASE-9/evidence"}, {"idempotency_key": "K/extension"}):
            answer = client.post("/v1/erasures", json={"subject_ids": [SUBJECTS[14]], **body})
            assert answer.status_code == 400, answer.text


def test_links_come_from_the_servers_address_not_the_callers_host_header(served: Served):
    with served.client(served.token("erasure:submit")) as client:
        answer = client.post("/v1/erasures", json={"subject_ids": [SUBJECTS[15]]}, headers={"Host": "evil.example:443"})
    assert answer.status_code == 202
    assert answer.json()["status_url"].startswith(served.url)
    assert "evil" not in answer.headers["location"]


def test_bad_prediction_rows_are_400_not_a_retryable_503_or_a_500(served: Served):
    with served.client(served.token("recommend")) as client:
        for item in (-5, 99_999, "abc", "1", 1.5, True, None, [1, 2], 10**30):
            answer = client.post("/v1/predictions", json={"rows": [{"subject_id": SUBJECTS[20], "item_id": item}]})
            assert answer.status_code == 400, (item, answer.status_code, answer.text)
            assert "retry-after" not in answer.headers
        assert client.post("/v1/recommendations", json={"subject_id": SUBJECTS[20], "k": "5"}).status_code == 400
        unknown = client.post("/v1/recommendations", json={"subject_id": "nobody-here"})
        assert unknown.status_code == 404
        assert "store" not in unknown.json()["detail"]  # never the server's paths or key settings
        assert "EXPUNGE_SUBJECT_KEY" not in unknown.json()["detail"]


def test_evidence_asked_for_while_another_is_computed_is_503_not_a_queue(served: Served):
    from expunge.orchestrator.api import evidence

    with served.client(served.token("erasure:submit", "erasure:read", "evidence:read")) as client:
        request_id = client.post("/v1/erasures", json={"subject_ids": [SUBJECTS[21]]}).json()["request_id"]
        while client.get(f"/v1/erasures/{request_id}").json()["committed_at"] is None:
            pass
        assert evidence._ONE_AT_A_TIME.acquire(timeout=60)
        try:
            busy = client.get(f"/v1/erasures/{request_id}/evidence")
        finally:
            evidence._ONE_AT_A_TIME.release()
        assert busy.status_code == 503
        assert busy.headers["retry-after"]
        # A "passed" report planted in the store by someone who can write it is never served:
        # the evidence is computed by the service and kept in its memory only.
        planted = {"request_id": request_id, "status": "passed", "checks": [], "planted": True}
        served.service.coordinator.store.put(f"journal/evidence/{request_id}.json", json.dumps(planted).encode())
        report = client.get(f"/v1/erasures/{request_id}/evidence")
        assert report.status_code == 200
        assert "planted" not in report.json()
        assert {c["name"] for c in report.json()["checks"]} >= {"exactness", "state", "receipt_log"}


def test_lines_and_ids_in_admin_text_and_token_ids_are_checked_and_never_echoed(served: Served):
    admin = served.token("admin", "erasure:submit", "erasure:read")
    with served.client(admin) as client:
        assert client.post("/v1/readmissions", json={"subject_ids": [1], "reason": "line\nbreak"}).status_code == 400
        request_id = client.post("/v1/erasures", json={"subject_ids": [SUBJECTS[22]]}).json()["request_id"]
        extension = client.post(f"/v1/erasures/{request_id}/extension", json={"months": 1, "reason": "a\x00b"})
        assert extension.status_code == 400
        revoked = client.delete(f"/v1/tokens/{admin}")  # the whole token instead of its id
        assert revoked.status_code in (400, 404)
        assert admin.split("_")[2][:3] not in revoked.text
