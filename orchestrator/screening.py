"""Free text that the service stores (a request's ``reason``, ``ticket``) must not identify a person.

A reason is kept in the journal, in MLflow tags and in reports that outlive the erasure, so
text that names the request's own subjects, or holds an e-mail address or a phone number, is
refused (``PersonalDataInTextError``, HTTP 400, CLI exit 2) before anything is stored. The
text is first folded (NFKC, so a full-width at sign (U+FF20) is ``@``; zero-width characters dropped; every
dash as ``-``; percent-escapes and HTML character references decoded, nested ones too), then a subject matches where its canonical id stands
alone, not inside a longer word or number: ``#user-7`` and ``subject=user-7`` name ``user-7``,
``ticket 17`` does not name ``1``. An e-mail address is an ``@`` between word characters. A phone
number is an international (``+44 20 7946 0958``), national (``020 7946 0958``) or North
American (``(415) 555-0132``) pattern of 8-15 digits standing alone; a plain run of digits, as
ticket systems number cases, is not. A bounded, conservative screen, not a detector of every personal datum.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import unquote

from expunge.orchestrator.errors import ConfigError, PersonalDataInTextError

__all__ = ["MAX_REASON", "MAX_TICKET", "clean_text", "screen_free_text", "screen_request_text"]

#: Longest reason and ticket a request may carry, in characters.
MAX_REASON, MAX_TICKET = 1000, 200

# An "@" between word characters: an address, with or without a top-level domain.
_EMAIL = re.compile(r"[\w.%+-]+@[\w-]+(?:\.[\w-]+)*")
_EDGE_L, _EDGE_R = r"(?<![\w/-])", r"(?![\w/-])"  # standing alone, not inside a word or a ticket number
#: (pattern, fewest digits): international, national (a leading 0), North American.
_PHONES = (
    (re.compile(_EDGE_L + r"\+\s?\d[\d ().-]{6,}\d" + _EDGE_R), 8),  # +44 20 7946 0958
    (re.compile(_EDGE_L + r"\(?0\d{1,4}\)?[ .-]\d{2,8}(?:[ .-]\d{2,8})*" + _EDGE_R), 9),  # 020-7946-0958
    (re.compile(_EDGE_L + r"\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}" + _EDGE_R), 10),  # (415) 555-0132
)
_MAX_PHONE_DIGITS = 15


def _normal(text: str) -> str:
    """NFKC (full-width @ and digits fold), format characters (zero-width spaces) dropped, dashes as '-'."""
    for _ in range(3):  # percent-escapes and HTML character references, nested up to three deep
        decoded = html.unescape(unquote(text))
        if decoded == text:
            break
        text = decoded
    folded = unicodedata.normalize("NFKC", text)
    kept = (ch for ch in folded if unicodedata.category(ch) != "Cf")
    return "".join("-" if unicodedata.category(ch) == "Pd" else ch for ch in kept)


def _names(text: str, subject: str) -> bool:
    """``subject`` (canonical) stands alone in ``text``: not inside a longer word or number."""
    return re.search(r"(?<!\w)" + re.escape(subject) + r"(?!\w)", text) is not None


def names_subject(text: str, subjects: Iterable[str]) -> bool:
    """Whether ``text`` names one of ``subjects`` (canonical ids) standing alone, after folding (pure)."""
    normal = _normal(text)
    return any(_names(normal, _normal(subject)) for subject in subjects)


def screen_free_text(field: str, text: str | None, subjects: Iterable[str]) -> None:
    """Refuse ``text`` when it names one of ``subjects`` (canonical ids), an e-mail address or a phone number.

    ``field``: the field's name, for the message. ``subjects``: the request's canonical subject
    ids (``expunge.shards.identity.canonical_subject_ids``). The message never repeats the match.

    Raises:
        PersonalDataInTextError: what was found (the kind and the field, not the value); nothing is stored.
    """
    if text is None:
        return
    normal = _normal(text)
    problems = []
    if _EMAIL.search(normal):
        problems.append("an e-mail address")
    phones = ((m.group(), fewest) for pattern, fewest in _PHONES for m in pattern.finditer(normal))
    if any(fewest <= sum(ch.isdigit() for ch in p) <= _MAX_PHONE_DIGITS for p, fewest in phones):
        problems.append("a phone number")
    if any(_names(normal, _normal(subject)) for subject in subjects):
        problems.append("a subject id of this request")
    if problems:
        raise PersonalDataInTextError(
            f"{field} holds {' and '.join(problems)}; it is stored with the request and shown in MLflow and "
            f"reports, so it must not identify anyone. Nothing was stored: give a ticket reference or a reason "
            "without personal data (e.g. 'Art. 17 request, ticket GDPR-2026-0042')"
        )


def clean_text(field: str, value: object, limit: int) -> str | None:
    """``value`` stripped, or None when omitted; 1-``limit`` printable characters on one line.

    Raises:
        ConfigError: not text, empty, too long, or with a line break or control character.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit or not value.isprintable():
        raise ConfigError(
            f"{field} must be 1-{limit} printable characters on one line (e.g. a ticket reference), or omitted"
        )
    return value.strip()


def screen_request_text(reason: object, ticket: object, subjects: Iterable[str]) -> tuple[str | None, str | None]:
    """A request's ``reason`` and ``ticket``, checked (``clean_text``) and screened (``screen_free_text``).

    Returns both stripped (None where omitted). ``subjects``: the request's canonical ids.

    Raises:
        ConfigError: a reason or ticket that is not 1-1000 (ticket: 1-200) printable characters.
        PersonalDataInTextError: either names a subject of the request, an e-mail address or a phone number.
    """
    subjects = list(subjects)
    cleaned_reason = clean_text("reason", reason, MAX_REASON)
    cleaned_ticket = clean_text("ticket", ticket, MAX_TICKET)
    screen_free_text("reason", cleaned_reason, subjects)
    screen_free_text("ticket", cleaned_ticket, subjects)
    return cleaned_reason, cleaned_ticket
