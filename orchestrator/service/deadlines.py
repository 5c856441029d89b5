"""The GDPR clock of an erasure request: received, due one calendar month later, extendable by two.

Art. 12(3) GDPR: the controller acts on a request "without undue delay and in any event within
one month of receipt", a period that "may be extended by two further months where necessary",
with the data subject told within the first month. A month is a calendar month: a request
received on 15 March is due on 15 April at the same time of day, and one received on 31 January
is due at the end of February (the last day of a shorter month; Regulation 1182/71, Art. 3(2)(c),
as the EDPB's guidelines 01/2022 read it). Pure functions: no clock is read here.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta

from expunge.orchestrator.errors import ConfigError

__all__ = ["GDPR_APPLIES", "MAX_EXTENSION_MONTHS", "add_months", "due_at", "is_late", "parse_received_at", "parse_time"]

#: Art. 99(2): the GDPR applies from 25 May 2018; no request can have been received under it before.
GDPR_APPLIES = datetime(2018, 5, 25, tzinfo=UTC)
#: Art. 12(3): "extended by two further months".
MAX_EXTENSION_MONTHS = 2
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_time(text: str) -> datetime:
    """An ISO 8601 timestamp with a UTC offset (as the journal stores them) as an aware datetime, in UTC.

    Raises:
        ValueError: not ISO 8601, or out of the representable range once in UTC.
    """
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError(f"{text[:40]!r} is out of range") from exc


def parse_received_at(text: str, now: datetime) -> str:
    """A caller's receipt date (backlog imports): ``YYYY-MM-DD`` (midnight UTC) or ISO 8601 with an offset.

    Returns it as the journal's UTC text.

    Raises:
        ConfigError: not a date, a time without an offset (ambiguous), or a time after ``now``.
    """
    if not isinstance(text, str):
        raise ConfigError("received_at must be text: YYYY-MM-DD or an ISO 8601 time with an offset")
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"received_at {text[:40]!r} is not a date: give YYYY-MM-DD or an ISO 8601 time with an offset "
            "(e.g. 2026-11-02T09:30:00+01:00)"
        ) from None
    if moment.tzinfo is None and not _DATE.fullmatch(text.strip()):
        raise ConfigError(
            f"received_at {text[:40]!r} has no UTC offset, so the deadline would depend on the server's clock: "
            "add one (e.g. +00:00 or Z), or give just the date"
        )
    try:
        moment = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:
        raise ConfigError(
            f"received_at {text[:40]!r} is out of range: give the date the request was received"
        ) from None
    if moment > now + timedelta(minutes=5):
        raise ConfigError(f"received_at {text[:40]!r} is in the future: give the date the request was received")
    if moment < GDPR_APPLIES:
        raise ConfigError(
            f"received_at {text[:40]!r} is before {GDPR_APPLIES.date()}, when the GDPR began to apply (Art. 99(2)): "
            "give the date the request was received"
        )
    return moment.isoformat()


def add_months(moment: datetime, months: int) -> datetime:
    """``moment`` plus ``months`` calendar months, on the same day, or the month's last day when it is shorter."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def due_at(received_at: str, extension_months: int = 0) -> str:
    """When a request received at ``received_at`` is due: one calendar month later, plus any extension.

    Raises:
        ConfigError: an extension of more than two months (Art. 12(3)) or a negative one.
    """
    if not 0 <= extension_months <= MAX_EXTENSION_MONTHS:
        raise ConfigError(
            f"an extension of {extension_months} month(s): GDPR Art. 12(3) allows at most "
            f"{MAX_EXTENSION_MONTHS} further months in all"
        )
    return add_months(parse_time(received_at), 1 + extension_months).isoformat()


def is_late(due: str, now: datetime, done_at: str | None) -> bool:
    """Done after its due time, or not done and past it."""
    finished = parse_time(done_at) if done_at else now
    return finished > parse_time(due)
