"""Pure decisions of the erasure service (no Ray, no store)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.service.journal import JournalEntry
from expunge.orchestrator.service.policy import (
    batch_text,
    check_idempotency_key,
    check_subject_count,
    check_subject_list,
    check_timeout,
    next_step,
    request_id_for,
    split_receipt,
    take_batch,
)


def test_the_same_key_digest_names_the_same_request_and_hides_the_key():
    assert request_id_for("ab" * 32) == request_id_for("ab" * 32) == "idem-" + "ab" * 16
    assert request_id_for("ab" * 32) != request_id_for("cd" * 32)


@pytest.mark.parametrize("key", ["", "x" * 257, "line\nbreak", "nul\x00"])
def test_unusable_idempotency_keys_are_refused(key):
    with pytest.raises(ConfigError, match="idempotency key"):
        check_idempotency_key(key)


@pytest.mark.parametrize(("count", "limit"), [(0, 10), (11, 10)])
def test_empty_and_oversized_requests_are_refused(count, limit):
    with pytest.raises(ConfigError):
        check_subject_count(count, limit)


def test_requests_are_coalesced_in_order_up_to_the_subject_limit():
    queued = [("a", ["s1", "s2"]), ("b", ["s2", "s3"]), ("c", ["s4", "s5"]), ("d", ["s6"])]
    assert take_batch(queued, 3) == 2  # a, b share s2: 3 distinct; c would make 5
    assert take_batch(queued, 100) == 4
    assert take_batch(queued, 1) == 1  # the first always goes, whatever its size
    assert take_batch([], 5) == 0


@given(st.lists(st.lists(st.integers(0, 30), min_size=1, max_size=5), min_size=1, max_size=20), st.integers(1, 40))
def test_a_batch_never_exceeds_the_limit_unless_it_is_one_request(requests, limit):
    queued = [(str(i), [str(s) for s in r]) for i, r in enumerate(requests)]
    taken = take_batch(queued, limit)
    assert 1 <= taken <= len(queued)
    union = {s for _, r in queued[:taken] for s in r}
    assert taken == 1 or len(union) <= limit
    if taken < len(queued):  # stopped because the next request would cross the limit
        assert len(union | set(queued[taken][1])) > limit


def test_a_queued_request_waits_for_the_window_then_commits():
    assert next_step(1, 0.01, 0, 0.0, window_s=0.05, register_within_s=2).kind == "wait"
    assert next_step(1, 0.01, 0, 0.0, window_s=0.05, register_within_s=2).wait_s == pytest.approx(0.04)
    assert next_step(1, 0.05, 0, 0.0, window_s=0.05, register_within_s=2).kind == "commit"


def test_registration_runs_when_idle_and_is_never_starved_by_commits():
    assert next_step(0, 0.0, 3, 0.0, window_s=0.05, register_within_s=2).kind == "register"
    assert next_step(5, 1.0, 3, 0.5, window_s=0.05, register_within_s=2).kind == "commit"
    assert next_step(5, 1.0, 3, 2.5, window_s=0.05, register_within_s=2).kind == "register"
    assert next_step(0, 0.0, 0, 0.0, window_s=0.05, register_within_s=2) == next_step(0, 0, 0, 0, 1, 1)
    assert next_step(0, 0.0, 0, 0.0, window_s=0.05, register_within_s=2).wait_s is None


def test_a_coalesced_request_gets_its_own_subjects_rows_and_outcome():
    batch = ErasureReceipt(
        request_id="batch-1",
        status="erased",
        subject_digests=("d1", "d2", "d3"),
        not_found_digests=("d3",),
        already_erased_digests=("d3",),
        rows_removed=12,
    )
    rows = {"d1": 5, "d2": 7}

    def entry(request_id, digests, ticket=None, reason=None):
        return JournalEntry(
            request_id=request_id, subject_digests=digests, received_at="2026-12-01T00:00:00+00:00", ticket=ticket,
            reason=reason,
        )  # fmt: skip

    first = split_receipt(batch, entry("r1", ("d1",), "CASE-1", "Art. 17"), rows)
    assert (first.request_id, first.status, first.rows_removed, first.batch_id) == ("r1", "erased", 5, "batch-1")
    assert (first.ticket, first.reason) == ("CASE-1", "Art. 17")  # each request keeps its own ticket and reason
    missed = split_receipt(batch, entry("r2", ("d3",)), rows)
    assert (missed.status, missed.not_found_digests, missed.already_erased_digests) == ("not_found", ("d3",), ("d3",))
    assert missed.ticket is None
    alone = split_receipt(batch, entry("batch-1", ("d1", "d2", "d3")), rows)
    assert alone.batch_id is None
    assert alone.rows_removed == 12


def test_a_batch_receipt_carries_a_ticket_only_when_it_stands_for_one_request():
    one = JournalEntry(request_id="r1", subject_digests=("d1",), received_at="t", ticket="CASE-1", reason="why")
    two = JournalEntry(request_id="r2", subject_digests=("d2",), received_at="t", ticket="CASE-2")
    assert batch_text([one]) == ("CASE-1", "why")
    assert batch_text([one, two]) == (None, None)


@pytest.mark.parametrize("value", ["12", b"12", {"a": 1}, {"a"}, None, 7, 2.5, (s for s in ["a"])])
def test_anything_but_a_list_of_ids_is_refused_so_a_string_is_never_read_as_characters(value):
    with pytest.raises(ConfigError, match="must be a list of ids"):
        check_subject_list(value)
    assert check_subject_list(("a", "b")) == ["a", "b"]


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), "3", True])
def test_a_wait_limit_must_be_a_finite_number(timeout):
    with pytest.raises(ConfigError, match="timeout"):
        check_timeout(timeout)
    assert check_timeout(None) is None
    assert check_timeout(0) == 0.0


def test_a_store_that_does_not_answer_or_holds_a_link_is_waited_for_other_failures_fail_the_batch():
    from expunge.orchestrator.errors import LinkInStoreError, ShardRetrainFailed, StorageUnavailableError
    from expunge.orchestrator.service.policy import MAX_ATTEMPTS, RETRY_PAUSE_S, retry_pause

    # An outage or a link in the store failed acknowledged requests after five tries (10 s).
    for error in (StorageUnavailableError("down"), LinkInStoreError("shards/0001 is a symbolic link")):
        pauses = [retry_pause(attempt, error) for attempt in range(1, 200)]
        assert None not in pauses
        assert pauses[:3] == [RETRY_PAUSE_S, 2 * RETRY_PAUSE_S, 3 * RETRY_PAUSE_S]
        assert max(pauses) == 30.0
    failed = ShardRetrainFailed(1, "out of memory")
    assert [retry_pause(a, failed) for a in range(1, MAX_ATTEMPTS + 1)][-1] is None
    assert retry_pause(MAX_ATTEMPTS - 1, failed) == (MAX_ATTEMPTS - 1) * RETRY_PAUSE_S
