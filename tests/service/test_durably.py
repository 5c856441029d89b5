"""``durably``: after-commit writes retried until they land, and a stopping service is never held by a backoff."""

from __future__ import annotations

from expunge.orchestrator.service import followup
from expunge.orchestrator.service.followup import durably
from expunge.shards.errors import StorageUnavailableError


def test_a_stop_during_a_backoff_ends_it_at_once_and_leaves_the_write_to_the_next_start(monkeypatch):
    slept: list[float] = []
    stop = {"now": False}

    def sleep(seconds: float) -> None:  # records what the backoff asks for; the stop comes during the wait
        slept.append(seconds)
        stop["now"] = True

    monkeypatch.setattr(followup.time, "sleep", sleep)
    calls = []

    def refused() -> None:
        calls.append(1)
        raise StorageUnavailableError("the store does not answer")

    assert durably("journal commit of req-1", refused, lambda: stop["now"]) is False
    assert len(calls) == 2  # tried, waited a moment, saw the stop, tried once more, gave up
    assert len(slept) == 1
    assert slept[0] <= followup._STOP_CHECK_S < followup.backoff_s(1)  # a nap, not the whole backoff


def test_a_write_that_lands_after_refusals_returns_true(monkeypatch):
    monkeypatch.setattr(followup.time, "sleep", lambda seconds: None)
    answers = iter([StorageUnavailableError("down"), OSError("reset"), None])

    def write() -> None:
        answer = next(answers)
        if answer is not None:
            raise answer

    assert durably("journal batch b-1", write, lambda: False) is True
