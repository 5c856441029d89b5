"""Pure rules of the request lifecycle: the GDPR clock (calendar months) and the free-text screen."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from expunge.orchestrator.errors import ConfigError, PersonalDataInTextError
from expunge.orchestrator.screening import screen_free_text
from expunge.orchestrator.service.deadlines import add_months, due_at, is_late, parse_received_at, parse_time


@pytest.mark.parametrize(
    ("received", "due"),
    [
        ("2026-03-15T10:00:00+00:00", "2026-04-15T10:00:00+00:00"),
        ("2026-01-31T08:00:00+00:00", "2026-02-28T08:00:00+00:00"),  # the month's last day
        ("2028-01-31T08:00:00+00:00", "2028-02-29T08:00:00+00:00"),  # a leap year
        ("2026-12-15T00:00:00+00:00", "2027-01-15T00:00:00+00:00"),
    ],
)
def test_a_request_is_due_one_calendar_month_after_receipt(received, due):
    assert due_at(received) == due


def test_an_extension_adds_calendar_months_and_at_most_two():
    assert due_at("2026-01-31T08:00:00+00:00", 2) == "2026-04-30T08:00:00+00:00"
    with pytest.raises(ConfigError, match="at most 2"):
        due_at("2026-01-31T08:00:00+00:00", 3)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)), st.integers(0, 3))
def test_add_months_lands_in_the_right_month_never_earlier_day_unless_clamped(moment, months):
    later = add_months(moment.replace(tzinfo=UTC), months)
    assert (later.year * 12 + later.month) - (moment.year * 12 + moment.month) == months
    assert later.day == moment.day or later.day < moment.day  # clamped to a shorter month's end
    assert later.time() == moment.time()


def test_late_means_done_after_due_or_pending_past_it():
    due = "2026-02-01T00:00:00+00:00"
    now = parse_time("2026-03-01T00:00:00+00:00")
    assert is_late(due, now, None)
    assert not is_late(due, now, "2026-01-20T00:00:00+00:00")
    assert is_late(due, now, "2026-02-02T00:00:00+00:00")


def test_a_receipt_date_needs_an_offset_and_must_not_be_in_the_future():
    now = datetime(2026, 12, 4, tzinfo=UTC)
    assert parse_received_at("2026-11-02", now) == "2026-11-02T00:00:00+00:00"
    assert parse_received_at("2026-11-02T09:30:00+01:00", now) == "2026-11-02T08:30:00+00:00"
    for bad, why in [("2026-11-02T09:30:00", "no UTC offset"), ("next week", "not a date"),
                     ((now + timedelta(days=2)).date().isoformat(), "future")]:  # fmt: skip
        with pytest.raises(ConfigError, match=why):
            parse_received_at(bad, now)


@pytest.mark.parametrize(
    "text",
    [
        "Art. 17 request, ticket GDPR-2026-0042",
        "ticket 17 of batch 2026-12-04",  # a date and short numbers are not phone numbers
        "CASE-20261204-0001",  # a long ticket number inside a word is not either
        "consent withdrawn via web form",
        "ticket 123456789",
        "SR 1234567890",
        "#1234567890",
        "2026-12-04-000123",
        "REQ 2026 0001 2345",
        "order 123-456-789",
        "2026/12/04 12345",
    ],
)
def test_ordinary_reasons_pass_the_screen(text):
    screen_free_text("reason", text, ["1", "user-7"])


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("asked by jane.doe@example.com", "e-mail"),
        ("call +44 20 7946 0958", "phone"),
        ("call 020-7946-0958 after 5", "phone"),
        ("erase user-7.", "subject"),
        ("subject 1 asked", "subject"),
        ("asked by jöhn@exämple.de", "e-mail"),
        ("john\uff20example.com", "e-mail"),
        ("john.doe@example", "e-mail"),
        ("mailto:john%40example.com", "e-mail"),
        ("see #user-7", "subject"),
        ("subject=user-7", "subject"),
        ("user-7\u200b asked", "subject"),
        ("user\u20117 asked", "subject"),
        ("call (415) 555-0132", "phone"),
        ("erase user%252D7", "subject"),  # percent-encoded twice
        ("erase user&#45;7", "subject"),  # an HTML character reference
        ("mail john&#64;example.com", "e-mail"),
    ],
)
def test_personal_data_in_free_text_is_refused_without_repeating_it(text, found):
    with pytest.raises(PersonalDataInTextError, match=found) as refused:
        screen_free_text("reason", text, ["1", "user-7"])
    assert "jane" not in str(refused.value)
    assert "7946" not in str(refused.value)
    assert isinstance(refused.value, ConfigError)  # exit 2
