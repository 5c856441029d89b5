"""Free text that the service stores (a request's ``reason``, ``ticket``) must not identify a person.

A reason is kept in the journal, in MLflow tags and in reports that outlive the erasure, so
text that names the request's own subjects, or holds an e-mail address or a phone number, is
refused (``PersonalDataInTextError``, HTTP 400, CLI exit 2) before anything is stored. The
subject check applies the identity rule to the text's tokens: a token (a run of characters
between whitespace or punctuation other than ``@ . _ -``) that is the canonical id of a subject
of the request is a match, so ``user-7`` matches the subject ``user-7`` but ``ticket 17`` does
not match ``1``. A bounded, conservative screen, not a detector of every personal datum.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from expunge.orchestrator.errors import PersonalDataInTextError

__all__ = ["screen_free_text"]

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# A phone-looking run: digits with spaces, dots, dashes or brackets, standing alone (not part of
# a word such as a ticket number "CASE-20261204-0001").
_PHONE = re.compile(r"(?<![\w-])\+?\(?\d[\d ()./-]{6,}\d(?![\w-])")
_TOKEN = re.compile(r"[^\s,;:!?\"'()\[\]{}<>/\\|]+")
_MIN_PHONE_DIGITS, _MAX_PHONE_DIGITS = 9, 15


def _tokens(text: str) -> set[str]:
    found = set()
    for token in _TOKEN.findall(text):
        found.add(token)
        found.add(token.rstrip("."))  # "ask user-7." ends a sentence
    return found


def screen_free_text(field: str, text: str | None, subjects: Iterable[str]) -> None:
    """Refuse ``text`` when it names one of ``subjects`` (canonical ids), an e-mail address or a phone number.

    ``field``: the field's name, for the message. ``subjects``: the request's canonical subject
    ids (``expunge.shards.identity.canonical_subject_ids``). The message never repeats the match.

    Raises:
        PersonalDataInTextError: what was found (the kind and the field, not the value); nothing is stored.
    """
    if text is None:
        return
    normal = unicodedata.normalize("NFC", text)
    problems = []
    if _EMAIL.search(normal):
        problems.append("an e-mail address")
    for match in _PHONE.finditer(normal):
        digits = sum(ch.isdigit() for ch in match.group())
        if _MIN_PHONE_DIGITS <= digits <= _MAX_PHONE_DIGITS:
            problems.append("a phone number")
            break
    wanted = set(subjects)
    if wanted and wanted & _tokens(normal):
        problems.append("a subject id of this request")
    if problems:
        raise PersonalDataInTextError(
            f"{field} holds {' and '.join(problems)}; it is stored with the request and shown in MLflow and "
            f"reports, so it must not identify anyone. Nothing was stored: give a ticket reference or a reason "
            "without personal data (e.g. 'Art. 17 request, ticket GDPR-2026-0042')"
        )
