"""What counts as the same person: the one rule that turns a subject id into its canonical text.

Every path that names a person goes through this module, so that the id in a training file,
on the command line, in a subjects file, in a Python call, in ``scan`` and in a serving
request all land on the same keyed digest:

- training rows: ``expunge.shards.rows.validate_rows`` (via ``canonical_subject_column``), and the
  coordinator's placement, which digests through ``SubjectHasher``;
- requests: ``SubjectHasher.digest`` / ``digest_many`` (Python API, coordinator, scan,
  serving) and ``expunge.pipelines.forget.read_subjects`` (``--subject`` flags, subjects files).

The rule (``canonical_subject_id``):

1. Text is Unicode NFC-normalised, then leading and trailing whitespace (every character
   for which ``str.isspace`` is true, tabs, CR and no-break spaces included) is removed.
   Case and inner whitespace are kept: ``Alice`` and ``alice`` are different people. A
   byte-order mark (U+FEFF) at either end is removed with the whitespace.
2. An integer is its decimal string: ``1001`` and ``"1001"`` are the same person
   (``"01001"`` is not). Booleans are refused.
3. Floating-point numbers are refused: ``1001.0`` is not an id, and above 2**53 distinct
   integer ids become one float, which would merge different people.
4. An id that is empty after step 1 is refused, and so is anything that is neither text nor
   an integer (``None``, bytes, decimals).
5. An id holding a control character (newline, tab, NUL, ...) after step 1 is refused: two
   ids pasted into one flag, or a NUL-padded export, would otherwise erase nobody.

Refusals raise ``InvalidSubjectIdError`` (a ``DataValidationError``) naming the position
of every refused id, never its value.
"""

from __future__ import annotations

import numbers
import unicodedata
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from expunge.shards.errors import InvalidSubjectIdError

__all__ = [
    "canonical_subject_column",
    "canonical_subject_id",
    "canonical_subject_ids",
    "parse_subjects_file",
]

_BOM = "\ufeff"
_UTF8_BOM = _BOM.encode()
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_MOST_PROBLEMS_LISTED = 10
_AS_TEXT = "pass the id as text (or an integer)"


def _refusal(value: object) -> tuple[str, str | None]:
    """``(canonical id, None)`` or ``("", why the value is refused)``."""
    if isinstance(value, str):
        # A byte-order mark at either end is an export artefact (a CSV's first cell), never part of an id.
        canonical = unicodedata.normalize("NFC", value).strip().strip(_BOM).strip()
        if not canonical:
            return "", "is empty (or only whitespace); every person needs a non-empty id"
        try:
            canonical.encode()
        except UnicodeEncodeError:
            return "", "is not valid Unicode text (it holds a lone surrogate)"
        if any(unicodedata.category(ch) == "Cc" for ch in canonical):
            # A NUL, a newline or another control character inside an id is a paste or encoding
            # accident (two ids in one flag, a NUL-padded export), never part of a real id.
            return "", "holds a control character (a newline, tab, NUL ...); give one id per --subject or line"
        return canonical, None
    if isinstance(value, bool):
        return "", f"is a boolean; {_AS_TEXT}"
    if isinstance(value, numbers.Integral):
        return str(int(value)), None
    if isinstance(value, numbers.Real):
        return "", (
            f"is a floating-point number ({type(value).__name__}); 1001.0 is not an id and large float ids "
            f"merge different people: {_AS_TEXT}"
        )
    return "", f"has type {type(value).__name__}; {_AS_TEXT}"


def _listed(problems: list[str]) -> list[str]:
    if len(problems) <= _MOST_PROBLEMS_LISTED:
        return problems
    return [*problems[:_MOST_PROBLEMS_LISTED], f"... and {len(problems) - _MOST_PROBLEMS_LISTED} more"]


def canonical_subject_id(value: object) -> str:
    """The canonical text of one subject id; raises ``InvalidSubjectIdError`` when refused."""
    canonical, problem = _refusal(value)
    if problem is not None:
        raise InvalidSubjectIdError("the request", [f"the subject id {problem}"])
    return canonical


def canonical_subject_ids(values: Iterable[object], source: str, item: str = "subject id") -> list[str]:
    """Canonical texts of many ids, in order; every refused id is listed in one error.

    ``source`` and ``item`` word the error, e.g. ``("the --subject flags", "--subject")``
    gives ``--subject 2 is empty ...`` (positions count from 1).
    """
    return _canonical_or_refused(((f"{item} {position}", value) for position, value in enumerate(values, 1)), source)


def _canonical_or_refused(labelled: Iterable[tuple[str, object]], source: str) -> list[str]:
    """Canonical ids of ``(where, value)`` pairs; every refused one listed (by where) in one error."""
    found: list[str] = []
    problems: list[str] = []
    for where, value in labelled:
        canonical, problem = _refusal(value)
        if problem is None:
            found.append(canonical)
        else:
            problems.append(f"{where} {problem}")
    if problems:
        raise InvalidSubjectIdError(source, _listed(problems))
    return found


def parse_subjects_file(data: bytes, source: str) -> list[str]:
    """The subject ids in the bytes of a subjects file, one per line, under the identity rule.

    The file is UTF-8 with or without a byte-order mark (a mark at the start of any line is
    ignored too, as left by concatenating files), with LF or CRLF line ends. Blank lines
    and lines whose first non-blank character is ``#`` are skipped.
    """
    if data.startswith(_UTF16_BOMS):
        raise InvalidSubjectIdError(
            source, ["is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8, one subject id per line"]
        )
    skipped = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    try:
        text = data[skipped:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skipped + exc.start
        line = data[:offset].count(b"\n") + 1
        raise InvalidSubjectIdError(
            source,
            [
                f"is not UTF-8: byte 0x{data[offset]:02x} at byte offset {offset} (line {line}) cannot be decoded; "
                "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 old.txt > new.txt`)"
            ],
        ) from exc
    lines = ((number, line.removeprefix(_BOM).strip()) for number, line in enumerate(text.split("\n"), start=1))
    return _canonical_or_refused(
        ((f"line {number}", line) for number, line in lines if line and not line.startswith("#")), source
    )


def canonical_subject_column(
    column: pa.Array | pa.ChunkedArray, name: str = "subject_id"
) -> tuple[pa.Array | pa.ChunkedArray, list[str]]:
    """The column with every id in canonical form, and the problems found (empty when none).

    Integer columns become their decimal strings; floating-point and other non-text columns
    are refused. Text is canonicalised once per distinct value with ``canonical_subject_id``'s
    own rule, then mapped back to the rows, so data and requests share one implementation.
    Nulls stay null (the caller reports them).
    """
    kind = column.type
    if pa.types.is_dictionary(kind):
        return canonical_subject_column(pc.cast(column, kind.value_type), name)
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return column, [
            f"{name} is a floating-point column ({kind}); 1001.0 is not an id and large float ids merge "
            "different people: store subject ids as text or integers"
        ]
    if pa.types.is_integer(kind) or pa.types.is_null(kind):
        return pc.cast(column, pa.string()), []
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return column, [f"{name} has type {kind}; store subject ids as text or integers"]
    text = pc.cast(column, pa.string())
    distinct = pc.unique(text).drop_null()
    originals = distinct.to_pylist()
    canonical = [_refusal(value)[0] for value in originals]
    problems: list[str] = []
    if "" in canonical:
        empty = pc.is_in(text, value_set=distinct.filter(pa.array([c == "" for c in canonical])))
        rows = pc.sum(empty).as_py()
        first = pc.index(empty, True).as_py()
        problems.append(
            f"{rows} row(s) have an empty {name} (or only whitespace), first at row {first}; "
            "every row needs the id of its data subject"
        )
    if canonical == originals:
        return text, problems
    return pc.take(pa.array(canonical, pa.string()), pc.index_in(text, value_set=distinct)), problems
