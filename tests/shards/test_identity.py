"""The identity rule: one canonical form per person, the same from data, flags, files and the API."""

from __future__ import annotations

import pickle
import unicodedata

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import DataValidationError, ExpungeError, InvalidSubjectIdError
from expunge.shards.identity import (
    canonical_subject_column,
    canonical_subject_id,
    canonical_subject_ids,
    parse_subjects_file,
)

ZOE_COMPOSED = "zo\u00eb"  # ë as one code point (NFC)
ZOE_DECOMPOSED = "zoe\u0308"  # e + combining diaeresis (NFD), what some keyboards and macOS file names give


@pytest.mark.parametrize(
    ("given_id", "canonical"),
    [
        (ZOE_DECOMPOSED, ZOE_COMPOSED),
        (ZOE_COMPOSED, ZOE_COMPOSED),
        ("  cust-3\t", "cust-3"),
        ("cust-3\r", "cust-3"),  # a CRLF file read as LF
        ("\u00a0cust-3\u3000", "cust-3"),  # no-break and ideographic spaces
        ("Alice Smith", "Alice Smith"),  # inner whitespace and case are kept
        ("\ufeff4", "4"),  # a byte-order mark left on an id (a CSV's first cell) by a Python caller
        (" \ufeffcust-3\ufeff ", "cust-3"),
        (1001, "1001"),
        (np.int64(1001), "1001"),
        (-7, "-7"),
        (2**64 + 1, "18446744073709551617"),  # no float rounding merges big ids
    ],
)
def test_the_canonical_form(given_id, canonical):
    assert canonical_subject_id(given_id) == canonical


@pytest.mark.parametrize(
    ("refused", "reason"),
    [
        ("", "empty"),
        ("  \t\r\n", "empty"),
        (1001.0, "floating-point"),
        (np.float64(1001.0), "floating-point"),
        (float("nan"), "floating-point"),
        (True, "boolean"),
        (None, "NoneType"),
        (b"cust-3", "bytes"),
        ("\udcff", "lone surrogate"),
    ],
)
def test_refused_ids_raise_a_typed_error(refused, reason):
    with pytest.raises(InvalidSubjectIdError, match=reason) as caught:
        canonical_subject_id(refused)
    assert isinstance(caught.value, DataValidationError)
    assert isinstance(caught.value, ExpungeError)


def test_every_refused_id_is_listed_by_position_never_by_value():
    with pytest.raises(InvalidSubjectIdError) as caught:
        canonical_subject_ids(["ok", "", 3.5, "secret-person", "  "], "the --subject flags", "--subject")
    problems = caught.value.problems
    assert [p.split(" is ")[0].split(" has ")[0] for p in problems] == ["--subject 2", "--subject 3", "--subject 5"]
    assert "the --subject flags" in str(caught.value)
    assert "3.5" not in str(caught.value)
    clone = pickle.loads(pickle.dumps(caught.value))
    assert type(clone) is InvalidSubjectIdError
    assert str(clone) == str(caught.value)


def test_the_hasher_applies_the_rule_for_every_caller(hasher):
    assert hasher.digest(ZOE_DECOMPOSED) == hasher.digest(ZOE_COMPOSED)
    assert hasher.digest(" cust-3 ") == hasher.digest("cust-3")
    assert hasher.digest(1001) == hasher.digest("1001") == hasher.digest(np.int64(1001))
    assert hasher.digest_many([ZOE_DECOMPOSED, 1001]) == [hasher.digest(ZOE_COMPOSED), hasher.digest("1001")]
    for refused in ("", "  ", 1001.0, None):
        with pytest.raises(InvalidSubjectIdError):
            hasher.digest(refused)
    with pytest.raises(InvalidSubjectIdError) as caught:
        hasher.digest_many(["a", "", 2.0])
    assert len(caught.value.problems) == 2


def test_digests_of_canonical_ids_are_unchanged_by_the_rule():
    """Stores trained before the rule stay readable: canonical ids digest as they always did."""
    import hashlib
    import hmac

    key = b"k" * 32
    assert SubjectHasher(key).digest("user-45") == hmac.new(key, b"user-45", hashlib.sha256).hexdigest()


def test_integer_and_text_columns_become_canonical_text():
    column, problems = canonical_subject_column(pa.chunked_array([[1001, 7], [2**62]]))
    assert problems == []
    assert column.to_pylist() == ["1001", "7", str(2**62)]
    column, problems = canonical_subject_column(pa.array([ZOE_DECOMPOSED, " a ", None, "b"]))
    assert problems == []
    assert column.to_pylist() == [ZOE_COMPOSED, "a", None, "b"]
    dictionary = pa.array(["x ", "x ", "y"]).dictionary_encode()
    assert canonical_subject_column(dictionary)[0].to_pylist() == ["x", "x", "y"]


@pytest.mark.parametrize("kind", [pa.float64(), pa.float32(), pa.decimal128(10, 1)])
def test_floating_point_subject_columns_are_refused(kind):
    values = pa.array([4242.0, 2.0**53, 2.0**53 + 1]).cast(kind, safe=False)  # the last two are one float
    _, problems = canonical_subject_column(values)
    assert len(problems) == 1
    assert "floating-point" in problems[0]
    assert "4242" not in problems[0]


def test_empty_ids_in_a_column_are_counted_with_the_first_row():
    _, problems = canonical_subject_column(pa.array(["a", "", "b", "  ", ""]))
    assert problems == [
        "3 row(s) have an empty subject_id (or only whitespace), first at row 1; "
        "every row needs the id of its data subject"
    ]


@given(st.lists(st.text(max_size=8), min_size=1, max_size=20))
def test_data_and_requests_share_one_rule(values):
    """The column path (data) and the scalar path (flags, files, API) agree on every text."""
    column, problems = canonical_subject_column(pa.array(values, pa.string()))
    scalar = []
    for value in values:
        try:
            scalar.append(canonical_subject_id(value))
        except InvalidSubjectIdError:
            scalar.append(None)
    if any(s is None for s in scalar):
        assert problems
    else:
        assert problems == []
        assert column.to_pylist() == scalar
        assert all(canonical_subject_id(s) == s for s in scalar)  # idempotent
        assert all(unicodedata.is_normalized("NFC", s) for s in scalar)


# ----- subjects files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"cust-3\ncust-4\n",
        b"\xef\xbb\xbfcust-3\ncust-4\n",  # UTF-8 with a byte-order mark (Windows Notepad, Excel)
        b"\xef\xbb\xbfcust-3\r\ncust-4\r\n",  # ... and CRLF line ends
        b"cust-3\r\n\r\n# a comment\r\n  cust-4  \r\n",
        b"cust-3\n\xef\xbb\xbfcust-4",  # two files concatenated, no final newline
    ],
    ids=["plain", "bom", "bom-crlf", "blank-comment-spaces", "concatenated"],
)
def test_subjects_files_in_every_common_encoding_shape(data):
    assert parse_subjects_file(data, "tickets.txt") == ["cust-3", "cust-4"]


def test_subjects_file_ids_are_normalised():
    assert parse_subjects_file(ZOE_DECOMPOSED.encode() + b"\n", "f") == [ZOE_COMPOSED]


def test_a_file_that_is_not_utf8_names_the_file_and_the_byte_offset():
    data = b"cust-3\nzo\xeb\n"  # Latin-1
    with pytest.raises(InvalidSubjectIdError) as caught:
        parse_subjects_file(data, "subjects file 'tickets.txt'")
    message = str(caught.value)
    assert "'tickets.txt'" in message
    assert "byte offset 9 (line 2)" in message
    assert "0xeb" in message
    with pytest.raises(InvalidSubjectIdError, match="byte offset 5"):
        parse_subjects_file(b"\xef\xbb\xbfab\xff", "f")  # offsets count the byte-order mark


def test_a_utf16_file_is_named_as_such():
    with pytest.raises(InvalidSubjectIdError, match="UTF-16"):
        parse_subjects_file("cust-3\n".encode("utf-16"), "f")


@pytest.mark.parametrize("pasted", ["user-7\nuser-8", "user-7\x00", "user\t7", "a\x85b"])
def test_control_characters_inside_an_id_are_refused(pasted):
    from expunge.shards.errors import InvalidSubjectIdError
    from expunge.shards.identity import canonical_subject_id

    with pytest.raises(InvalidSubjectIdError, match="control character"):
        canonical_subject_id(pasted)
