"""``Client`` and ``AsyncClient`` against a real uvicorn on loopback: auth, retries with one key, typed errors, waiting."""

from __future__ import annotations

import asyncio
import datetime as dt
import pickle
import socket
import time

import httpx
import pytest

from expunge import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConfigError,
    ErasureWaitTimeout,
    ExpungeError,
    IdempotencyConflictError,
    InvalidSubjectIdError,
    PermissionDeniedError,
    ServiceUnavailableError,
    UnknownRequestError,
    UnknownSubjectError,
)
from expunge.client._transport import Call, RetryPolicy, retry_after_s, retryable_transport_error
from tests.client.conftest import ADMIN, READ, SUBMIT, Injected, Served

pytestmark = pytest.mark.integration


def _client(served: Served, token: str | None = SUBMIT, **options: float) -> Client:
    return Client(served.url, token, **{"retry_s": 5.0, **options})


# ----- authentication ---------------------------------------------------------------------------


def test_health_needs_no_token_and_the_url_may_end_in_v1(served):
    with Client(served.url + "/v1/", None) as client:
        assert client.health().status == "ok"


def test_no_token_or_an_unknown_one_is_an_authentication_error_and_not_retried(served):
    for token in (None, "forged"):
        with _client(served, token) as client, pytest.raises(AuthenticationError, match="does not know"):
            client.status("req-1")
    assert len(served.fake.calls) == 2


def test_a_token_without_the_scope_is_permission_denied_and_nothing_is_submitted(served):
    with _client(served, READ) as client, pytest.raises(PermissionDeniedError, match="erasure:submit"):
        client.submit(["user-7"])
    assert served.fake.requests == {}


# ----- submit, retries, idempotency -------------------------------------------------------------


def test_a_503_then_success_resends_the_same_made_up_key(served):
    served.fake.inject(Injected(503, "StorageUnavailableError", retry_after="0"), Injected(502))
    with _client(served) as client:
        accepted = client.submit(["user-7", 1001], ticket="GDPR-1")
    keys = [body["idempotency_key"] for body in served.fake.bodies("POST", "/v1/erasures")]
    assert len(keys) == 3
    assert len(set(keys)) == 1
    assert keys[0].startswith("sdk-")
    assert accepted.request_id == "req-1"
    assert served.fake.requests["req-1"]["subject_ids"] == ["user-7", 1001]  # ints stay ints


def test_each_call_without_a_key_gets_its_own(served):
    with _client(served) as client:
        first, second = client.submit(["user-7"]), client.submit(["user-7"])
    assert first.request_id != second.request_id


def test_resubmitting_a_key_returns_the_same_request_and_a_reused_key_for_others_conflicts(served):
    with _client(served) as client:
        first = client.submit(["user-7"], idempotency_key="GDPR-0042")
        again = client.submit(["user-7"], idempotency_key="GDPR-0042")
        assert again.request_id == first.request_id
        with pytest.raises(IdempotencyConflictError) as conflict:
            client.submit(["user-8"], idempotency_key="GDPR-0042")
    assert isinstance(conflict.value, ConfigError)  # the class the server named, with its hierarchy
    assert len(served.fake.requests) == 1


def test_503_is_retried_until_retry_s_then_raised_as_the_problem_says(served):
    served.fake.inject(*[Injected(503, "StoreBusyError", retry_after="0")] * 100)
    started = time.monotonic()
    with _client(served, retry_s=0.5) as client, pytest.raises(ExpungeError) as busy:
        client.health()
    assert type(busy.value).__name__ == "StoreBusyError"
    assert str(busy.value) == "injected 503"
    assert len(served.fake.calls) > 2
    assert time.monotonic() - started < 30


def test_a_4xx_is_never_retried(served):
    served.fake.inject(Injected(400, "ConfigError"))
    with _client(served) as client, pytest.raises(ConfigError, match="injected 400"):
        client.submit(["user-7"])
    assert len(served.fake.calls) == 1


def test_a_proxys_502_is_not_retried_for_a_call_that_is_not_idempotent(served):
    served.fake.inject(Injected(502))
    with _client(served, ADMIN) as client, pytest.raises(ServiceUnavailableError, match="HTTP 502"):
        client.readmit(["user-7"], reason="new consent C-12")
    assert len(served.fake.calls) == 1
    served.fake.inject(Injected(503, "StorageUnavailableError", retry_after="0"))
    with _client(served, ADMIN) as client:
        assert client.readmit(["user-7", "user-8"], reason="new consent C-12") == 2  # 503: nothing was done


def test_an_unreachable_service_is_service_unavailable_after_retry_s():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}", SUBMIT, retry_s=0.5)
    with client, pytest.raises(ServiceUnavailableError, match="same idempotency key 'GDPR-9'"):
        client.submit(["user-7"], idempotency_key="GDPR-9")


# ----- typed errors -----------------------------------------------------------------------------


def test_a_problem_becomes_the_class_it_names_with_the_servers_detail(served):
    with _client(served) as client:
        with pytest.raises(InvalidSubjectIdError) as invalid:
            client.submit(["user-7", "bad"])
        with pytest.raises(UnknownRequestError, match="no erasure request 'req-404'"):
            client.status("req-404")
        with pytest.raises(UnknownSubjectError):
            client.recommend("nobody")
    assert str(invalid.value) == "1 problem(s) in subject_ids; nothing was changed:\n  - position 1: not an id here"
    # InvalidSubjectIdError builds its message from fields: the client's copy keeps the server's text and pickles.
    copy = pickle.loads(pickle.dumps(invalid.value))
    assert isinstance(copy, InvalidSubjectIdError)
    assert str(copy) == str(invalid.value)


def test_an_unknown_code_is_an_expunge_error(served):
    served.fake.inject(Injected(400, "NoSuchErrorClass"), Injected(400, "__class__"))
    with _client(served) as client:
        for _ in range(2):
            with pytest.raises(ExpungeError) as unknown:
                client.health()
            assert type(unknown.value) is ExpungeError


# ----- waiting ----------------------------------------------------------------------------------


def test_forget_returns_once_committed_and_wait_polls_to_done_by_ticket(served):
    with _client(served) as client:
        committed = client.forget(["user-7"], ticket="GDPR-7", reason="web form", timeout=30)
        assert committed.stage == "committed"
        assert committed.committed_at is not None
        done = client.wait("GDPR-7", stage="done", timeout=30, poll_s=0.01)
    assert done.state == "done"
    assert done.done_at is not None
    assert done.request_id == committed.request_id


def test_wait_times_out_with_the_state_and_the_request_goes_on(served):
    with _client(served) as client:
        accepted = client.submit(["stuck"])
        with pytest.raises(ErasureWaitTimeout, match="is 'accepted', not yet committed"):
            client.wait(accepted.request_id, timeout=0.2, poll_s=0.05)
        with pytest.raises(ErasureWaitTimeout):
            client.wait(accepted.request_id, timeout=0)  # look once
    assert len(served.fake.bodies("GET", f"/v1/erasures/{accepted.request_id}")) >= 3


def test_wait_raises_when_the_request_failed(served):
    with _client(served) as client, pytest.raises(ExpungeError, match="failed: ShardRetrainFailed"):
        client.forget(["fail-me"], timeout=30)


# ----- the other routes -------------------------------------------------------------------------


def test_list_extend_evidence_recommend_predict(served):
    with _client(served) as client:
        client.forget(["user-7"], ticket="T/1", timeout=30)  # a ticket with a slash is one path segment
        listed = client.list(state="pending", due_before=dt.datetime(2027, 2, 1, tzinfo=dt.UTC), ticket="T/1")
        assert listed.count == 1
        extended = client.extend("T/1", 2, "complex request: many systems")
        assert extended.extension is not None
        assert extended.extension.months == 2
        assert client.evidence("T/1")["passed"] is True
        assert client.recommend("user-8", k=3) == [0, 1, 2]
        assert client.predict([{"subject_id": "user-8", "item_id": 4}] * 2) == [3.5, 3.5]
    (query,) = [q for m, p, _, q in served.fake.calls if (m, p) == ("GET", "/v1/erasures")]
    assert query == {"state": "pending", "due_before": "2027-02-01T00:00:00+00:00", "ticket": "T/1"}


def test_tokens_are_created_listed_and_revoked(served):
    with _client(served, ADMIN) as client:
        created = client.create_token("recommender", ["recommend"])
        assert created.token == "secret-shown-once"
        assert [t.name for t in client.tokens()] == ["recommender"]
        assert client.revoke_token(created.token_id).revoked_at is not None


# ----- refused before any request ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject_ids", "error"),
    [
        ("user-7", ConfigError),  # one id per character otherwise
        ([], ConfigError),
        (None, ConfigError),
        ({"user-7": 1}, ConfigError),
        ([True], InvalidSubjectIdError),
        ([1001.0], InvalidSubjectIdError),
        (["user-7", None], InvalidSubjectIdError),
    ],
)
def test_bad_subject_lists_are_refused_before_any_request(served, subject_ids, error):
    with _client(served) as client, pytest.raises(error):
        client.submit(subject_ids)
    assert served.fake.calls == []


def test_a_refused_id_is_named_by_its_position_from_1_never_by_its_value(served):
    with _client(served) as client, pytest.raises(InvalidSubjectIdError) as refused:
        client.submit(["user-7", 7.5])
    assert "subject id 2 is a float" in str(refused.value)
    assert "7.5" not in str(refused.value)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c: c.wait("req-1", stage="registered"), "'committed' or 'done'"),
        (lambda c: c.wait("req-1", poll_s=0), "poll_s"),
        (lambda c: c.list(state="late-ish"), "state"),
        (lambda c: c.list(due_before=dt.datetime(2027, 1, 1)), "without a timezone"),
        (lambda c: c.extend("req-1", 3, "why"), "1 or 2"),
        (lambda c: c.recommend("user-7", k=0), "RecommendRequest refused: k"),
        (lambda c: c.status(""), "ref"),
        (lambda c: c.predict([]), "rows"),
        (lambda c: c.submit(["user-7"], ticket="x" * 201), "ticket"),
    ],
)
def test_bad_arguments_are_config_errors_before_any_request(served, call, match):
    with _client(served) as client, pytest.raises(ConfigError, match=match):
        call(client)
    assert served.fake.calls == []


def test_a_url_that_is_not_http_is_refused():
    with pytest.raises(ConfigError, match="http:// or https://"):
        Client("127.0.0.1:8470", SUBMIT)


# ----- the async twin ---------------------------------------------------------------------------


def test_async_client_submits_with_one_key_across_a_503_and_waits_to_done(served):
    served.fake.inject(Injected(503, "StorageUnavailableError", retry_after="0"))

    async def scenario() -> tuple[str, str]:
        async with AsyncClient(served.url, SUBMIT, retry_s=5.0) as client:
            committed = await client.forget(["user-7"], ticket="GDPR-A", timeout=30)
            done = await client.wait(committed.request_id, stage="done", poll_s=0.01, timeout=30)
            with pytest.raises(PermissionDeniedError):
                await client.readmit(["user-7"], reason="new consent")
            with pytest.raises(ErasureWaitTimeout):
                await client.wait((await client.submit(["stuck"])).request_id, timeout=0.1, poll_s=0.02)
            return committed.stage, done.state

    assert asyncio.run(scenario()) == ("committed", "done")
    keys = {body["idempotency_key"] for body in served.fake.bodies("POST", "/v1/erasures")[:2]}
    assert len(keys) == 1


# ----- the retry rule (pure) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "retry_after", "pause"), [(0, None, 0.2), (1, None, 0.4), (10, None, 5.0), (3, 7.0, 7.0)]
)
def test_pauses_double_to_a_cap_or_follow_retry_after(attempt, retry_after, pause):
    assert RetryPolicy(retry_s=60).pause_s(attempt, retry_after) == pytest.approx(pause)


def test_retry_after_reads_seconds_and_http_dates():
    request = httpx.Request("GET", "http://x/v1/healthz")
    now = dt.datetime(2026, 12, 4, 10, 0, 0, tzinfo=dt.UTC)
    date = httpx.Response(503, headers={"Retry-After": "Fri, 04 Dec 2026 10:00:07 GMT"}, request=request)
    assert retry_after_s(date, now) == pytest.approx(7.0)
    assert retry_after_s(httpx.Response(503, headers={"Retry-After": "5"}, request=request)) == 5.0
    assert retry_after_s(httpx.Response(503, headers={"Retry-After": "soon"}, request=request)) is None
    assert retry_after_s(httpx.Response(503, request=request)) is None


@pytest.mark.parametrize(
    ("error", "idempotent", "retried"),
    [
        (httpx.ConnectError("refused"), False, True),  # never sent
        (httpx.ConnectTimeout("slow"), False, True),
        (httpx.ReadTimeout("slow"), True, True),
        (httpx.ReadTimeout("slow"), False, False),  # may have been carried out
        (httpx.RemoteProtocolError("dropped"), False, False),
        (httpx.UnsupportedProtocol("ftp"), True, False),
    ],
)
def test_transport_errors_are_retried_only_when_safe(error, idempotent, retried):
    assert retryable_transport_error(error, Call("POST", "/x", idempotent=idempotent)) is retried


def test_status_and_wait_take_submits_answer_itself(served):
    # README: submit returns an ErasureAccepted; passing it on (not its request_id) used to be refused.
    with _client(served) as client:
        accepted = client.submit(["user-7"])
        assert client.status(accepted).request_id == accepted.request_id
        assert client.wait(accepted, timeout=30, poll_s=0.01).request_id == accepted.request_id
        with pytest.raises(ConfigError, match=r"accepted\.request_id"):
            client.status("")
