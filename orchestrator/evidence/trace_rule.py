"""What counts as a trace of a person in text: the bounded token rule and the field rules (pure; no I/O).

The scan (``expunge.orchestrator.evidence.scan``) looks for a subject's canonical id
(``expunge.shards.identity``) in text with these functions; docs/verification.md states the
same rules for people.

**Bounded token.** The id occurs in the text (both NFC; case kept, as the identity rule keeps
it) and the word goes on at neither end. A word goes on past a character that is a letter, a
digit or ``_``; past one of ``. - @ +`` that has a letter, digit or ``_`` on both sides; and
past ``:`` or ``,`` between two digits. Every other character (space, quotes, brackets, ``/``,
``=``, ``;``, ``'`` ...) and the ends of the text end a word. So for the id ``1``: ``"1"``,
``user 1``, ``id=1``, ``subject:1``, ``[1]`` and ``1.`` at the end of a sentence hold it;
``10``, ``v1``, ``1.5``, ``req-1``, ``user_1``, ``18:52:1`` and ``1,000`` do not. For
``ann@example.org``: ``mailto:ann@example.org`` and ``<ann@example.org>`` hold it;
``bann@example.org``, ``ann@example.org.uk`` and ``x-ann@example.org`` (other addresses) do not.

**Fields.** In a JSON document (and in a checkpoint's pickled payload, walked the same way):

- numbers, booleans and null are never a trace (``"rows": 1`` counts rows; Expunge stores
  ids as text under the identity rule);
- a key shaped like a field name (``[A-Za-z_][A-Za-z0-9_.]*``: ``rows``, ``id``, ``train``) is
  the document's schema, never a trace; any other key (``"user-9"``, ``"1"``, an e-mail) is
  data and is searched by the bounded token rule;
- a string under a *generated field* (``is_generated_field``: versions, times, hashes,
  states, kinds, counters, storage and tracking locations, the job's settings, a report's
  own summary) holds a value Expunge computed itself and is not searched;
- a string that names an object of the store (``shards/0000/slices/0001-ab12.parquet``) is
  searched in its last component without the extension only, unless Expunge generated that
  name (hex digits and ``-``: a sequence number, a content hash): the folders are Expunge's
  vocabulary, the name may hold a caller's request id;
- every other string (a reason, a ticket, a request id, an error message, any field Expunge
  does not know) is searched by the bounded token rule.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping

__all__ = [
    "STORE_FOLDERS",
    "bounded_token_spans",
    "holds_token",
    "is_field_name",
    "is_generated_field",
    "is_number_text",
    "json_paths_containing",
    "json_traces",
    "object_key_holds",
    "object_name_holds",
    "text_lines_holding",
]

#: The top-level folders of an Expunge store: a string starting with one of them and "/" is an object key.
STORE_FOLDERS = frozenset(("ensemble", "journal", "lease", "placement", "receipts", "shards", "staging", "tombstones"))

_JOIN_WORDS = frozenset(".-@+")  # joins two word characters: v1.2, user-45, ann@example.org, a+b
_JOIN_DIGITS = frozenset(":,")  # joins two digits only: 18:52:13, 1,000, 13,123 (log milliseconds)
_GENERATED_NAME = re.compile(r"[0-9a-f]+(?:-[0-9a-f]+)*")
_QUALIFIERS = frozenset(("before", "after"))
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_NUMBER_TEXT = re.compile(rf"\s*\[?\s*(?:{_NUMBER}(?:\s*,\s*{_NUMBER})*)?\s*\]?\s*")

#: The last word of a generated field's name (words split at "_" and "."): Expunge computes
#: these values (versions, times, hashes, states, kinds, counters, where things are stored,
#: who holds the lease, the job's settings, a report's own wording), so a person is never in them.
GENERATED_WORDS = frozenset(
    (
        "version", "versions", "at", "since", "sha256", "digest", "digests", "fingerprint", "check",
        "kind", "status", "stage", "action", "outcome", "operation", "op", "purpose", "sequence", "seconds",
        "uri", "storage", "source", "owner", "host", "space",
        "registry", "sharding", "training", "model", "placement",
        "summary", "problems", "detail", "details",
    )
)  # fmt: skip


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _joined(left: str, joiner: str, right: str) -> bool:
    if joiner in _JOIN_WORDS:
        return _is_word(left) and _is_word(right)
    return joiner in _JOIN_DIGITS and left.isdigit() and right.isdigit()


def _goes_on_left(text: str, start: int) -> bool:
    if start == 0:
        return False
    before = text[start - 1]
    return _is_word(before) or (start >= 2 and _joined(text[start - 2], before, text[start]))


def _goes_on_right(text: str, end: int) -> bool:
    if end >= len(text):
        return False
    after = text[end]
    return _is_word(after) or (end + 1 < len(text) and _joined(text[end - 1], after, text[end + 1]))


def bounded_token_spans(text: str, subject_id: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every occurrence of ``subject_id`` in ``text`` as a whole token.

    ``subject_id`` is a canonical id (NFC, stripped); ``text`` is NFC-normalised first, so the
    offsets index the normalised text. An empty id matches nothing.
    """
    if not subject_id:
        return []
    text = unicodedata.normalize("NFC", text)
    spans = []
    start = text.find(subject_id)
    while start >= 0:
        end = start + len(subject_id)
        if not _goes_on_left(text, start) and not _goes_on_right(text, end):
            spans.append((start, end))
        start = text.find(subject_id, start + 1)
    return spans


def holds_token(text: str, subject_id: str) -> bool:
    """Whether ``text`` holds ``subject_id`` as a bounded token (see the module docstring)."""
    return bool(bounded_token_spans(text, subject_id))


def text_lines_holding(lines: Iterable[str], subject_id: str) -> list[int]:
    """The line numbers (from 1) of the lines that hold ``subject_id`` as a bounded token."""
    return [number for number, line in enumerate(lines, start=1) if holds_token(line, subject_id)]


def is_field_name(key: str) -> bool:
    """Whether a JSON key (or an MLflow param or tag key) is shaped like a field name: schema, not data."""
    return _FIELD_NAME.fullmatch(key) is not None


def is_generated_field(name: str) -> bool:
    """Whether the field ``name`` holds values Expunge computes.

    Its words are split at ``_`` and ``.``; trailing ``before``/``after`` are dropped; the last
    word left is in ``GENERATED_WORDS`` (``registry_version_before``, ``expunge.kind``, ``created_at``).
    """
    words = [w for w in re.split(r"[_.]", name.lower()) if w]
    while words and words[-1] in _QUALIFIERS:
        words.pop()  # registry_version_before is a version
    return bool(words) and words[-1] in GENERATED_WORDS


def is_number_text(value: str) -> bool:
    """Whether ``value`` is a number or a list of numbers written as text (how MLflow keeps numbers)."""
    return bool(value.strip()) and _NUMBER_TEXT.fullmatch(value) is not None


def object_name_holds(key: str, subject_id: str) -> bool:
    """Whether an object key's name (last part, no extension) holds the id as a bounded token.

    A name Expunge generates (a sequence number, a content hash, ``0001-<hash>``: hex digits
    and ``-`` only) holds no caller text and is not searched; a request id in
    ``receipts/requests/<request id>.json`` is.
    """
    name = key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return _GENERATED_NAME.fullmatch(name) is None and holds_token(name, subject_id)


def object_key_holds(value: str, subject_id: str, folders: frozenset[str] = STORE_FOLDERS) -> bool | None:
    """For a string naming an object of the store, whether its name holds the id (``object_name_holds``).

    None when ``value`` does not name an object (its first part is not one of ``folders``).
    """
    first, slash, _ = value.partition("/")
    if not slash or first not in folders or any(ch.isspace() for ch in value):
        return None
    return object_name_holds(value, subject_id)


def _string_holds(value: str, subject_id: str, folders: frozenset[str]) -> bool:
    as_key = object_key_holds(value, subject_id, folders)
    return holds_token(value, subject_id) if as_key is None else as_key


def json_traces(document: object, subject_id: str, folders: frozenset[str] = STORE_FOLDERS) -> list[str]:
    """The JSON paths (``$.shards[0].reason``) where a parsed document holds ``subject_id`` (the field rules).

    A data key (one not shaped like a field name) is named by its position, never its text
    (``$.counts.<key 2>``), since it may be a person's id. Mappings with non-text keys and
    tuples (as in a checkpoint's pickled payload) are walked too; anything else (a tensor, a
    number) is not a trace.
    """
    found: list[str] = []

    def walk(node: object, path: str) -> None:
        if isinstance(node, str):
            if _string_holds(node, subject_id, folders):
                found.append(path)
        elif isinstance(node, Mapping):
            for position, (key, value) in enumerate(node.items(), start=1):
                if not isinstance(key, str):
                    walk(value, f"{path}[{key!r}]" if isinstance(key, int) else f"{path}.<key {position}>")
                elif is_field_name(key):
                    if not is_generated_field(key):
                        walk(value, f"{path}.{key}")
                else:
                    step = f"{path}.<key {position}>"
                    if holds_token(key, subject_id):
                        found.append(f"{step} (the key itself)")
                    walk(value, step)
        elif isinstance(node, list | tuple):
            for index, item in enumerate(node):
                walk(item, f"{path}[{index}]")

    walk(document, "$")
    return found


def json_paths_containing(document: object, needle: str) -> list[str]:
    """The paths of every key or string of a parsed document that contains ``needle`` (no field rules).

    For the keyed digest, which nothing but a trace of the person can contain. Data keys are
    named by position, as in ``json_traces``.
    """
    found: list[str] = []

    def walk(node: object, path: str) -> None:
        if isinstance(node, str):
            if needle in node:
                found.append(path)
        elif isinstance(node, Mapping):
            for position, (key, value) in enumerate(node.items(), start=1):
                named = isinstance(key, str) and is_field_name(key)
                step = f"{path}.{key}" if named else f"{path}.<key {position}>"
                if isinstance(key, str) and needle in key:
                    found.append(f"{step} (the key itself)")
                walk(value, step)
        elif isinstance(node, list | tuple):
            for index, item in enumerate(node):
                walk(item, f"{path}[{index}]")

    walk(document, "$")
    return found
