"""MovieLens ratings files in any common layout, read into canonical rows by what the file says.

One reader for every part that takes ratings files: training data (``pipelines.datasets``) and
the audit's held-out rows (``orchestrator.evidence.holdout``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from expunge.shards.errors import DataValidationError
from expunge.shards.rows import ITEM_ID, RATING, RECORD_ID, SUBJECT_ID, validate_rows

__all__ = ["MOVIELENS_LAYOUTS", "load_movielens"]

log = logging.getLogger(__name__)

#: The ratings layouts ``load_movielens`` understands, as named in its errors.
MOVIELENS_LAYOUTS = (
    "GroupLens u.data (MovieLens 100K): tab-separated user, item, rating, timestamp; no header",
    "RecBole .inter: tab-separated, a header naming user_id, item_id, rating (timestamp optional) "
    "in any order, with or without :token/:float suffixes",
    "MovieLens 1M/10M ratings.dat: UserID::MovieID::Rating::Timestamp; no header",
    "MovieLens latest ratings.csv: comma-separated, header userId,movieId,rating,timestamp",
)

# Header names (lower case, type suffix removed) -> canonical role.
_HEADER_ROLES = {
    "user_id": "user",
    "userid": "user",
    "item_id": "item",
    "itemid": "item",
    "movie_id": "item",
    "movieid": "item",
    "rating": "rating",
    "timestamp": "timestamp",
}


@dataclass(frozen=True)
class _Layout:
    """How to read one ratings file: delimiter, header rows to skip, and where each role is."""

    name: str
    delimiter: str
    skip_rows: int
    width: int  # fields per line as pyarrow sees them
    roles: dict[str, int]  # role -> field index


def _unknown_layout(file: Path, found: str) -> DataValidationError:
    understood = "; ".join(f"({n}) {layout}" for n, layout in enumerate(MOVIELENS_LAYOUTS, start=1))
    return DataValidationError(str(file), [f"unknown ratings layout: {found}. Understood layouts: {understood}"])


def _detect_layout(file: Path) -> _Layout:
    """The layout of a ratings file, from its first line alone."""
    with file.open("rb") as handle:
        first = handle.readline().removeprefix(b"\xef\xbb\xbf").rstrip(b"\r\n").decode("utf-8", errors="replace")
    if not first.strip():
        raise _unknown_layout(file, "the first line is empty")
    if "::" in first:
        if len(first.split("::")) != 4:
            raise _unknown_layout(file, f"the first line has {len(first.split('::'))} '::'-separated fields, not 4")
        # pyarrow splits on single characters: "a::b" is the fields "a", "", "b".
        return _Layout(MOVIELENS_LAYOUTS[2], ":", 0, 7, {"user": 0, "item": 2, "rating": 4, "timestamp": 6})
    delimiter = "\t" if "\t" in first else ","
    fields = [f.strip().strip('"') for f in first.split(delimiter)]
    names = [f.split(":")[0].strip().lower() for f in fields]
    roles = {_HEADER_ROLES[n]: i for i, n in reversed(list(enumerate(names))) if n in _HEADER_ROLES}
    if not roles:
        # No header: only u.data has none among tab/comma layouts. Bad values in the first line
        # are reported by validation like any other line; the line itself is never echoed.
        if delimiter == "\t" and len(fields) == 4:
            return _Layout(MOVIELENS_LAYOUTS[0], "\t", 0, 4, {"user": 0, "item": 1, "rating": 2, "timestamp": 3})
        shape = f"{len(fields)} {'tab' if delimiter == chr(9) else 'comma'}-separated field(s)"
        raise _unknown_layout(file, f"the first line has {shape} and no header naming user, item and rating columns")
    missing = [r for r in ("user", "item", "rating") if r not in roles]
    if missing:
        raise _unknown_layout(file, f"the header {names} names no {' or '.join(missing)} column")
    name = MOVIELENS_LAYOUTS[1] if delimiter == "\t" else MOVIELENS_LAYOUTS[3]
    return _Layout(name, delimiter, 1, len(fields), roles)


def load_movielens(path: str | Path) -> pa.Table:
    """MovieLens ratings in any layout of ``MOVIELENS_LAYOUTS``, read by what the file says.

    Header files map columns by name, in any order. User ids are read as the text in the
    file (``007`` stays ``007``) and put in canonical form by the identity rule; ratings and
    item ids must be numbers. Record ids are ``user:item:timestamp`` (``user:item``
    without a timestamp). Every problem is listed in one ``DataValidationError``.
    """
    file = Path(path)
    if file.is_dir():
        raise DataValidationError(
            str(file), [f"{str(file)!r} is a folder: give the ratings file inside it (e.g. u.data or ml-100k.inter)"]
        )
    if not file.is_file():
        raise DataValidationError(
            str(file),
            [
                f"file {str(file)!r} does not exist (looked for {str(file.resolve())!r}; a relative path (data.path, --data) is read from the current folder)"
            ],
        )
    layout = _detect_layout(file)
    columns = [f"field_{i}" for i in range(layout.width)]
    wanted = {role: columns[index] for role, index in layout.roles.items()}
    text_roles = [wanted[r] for r in ("user", "timestamp") if r in wanted]
    try:
        raw = pacsv.read_csv(
            file,
            read_options=pacsv.ReadOptions(column_names=columns, skip_rows=layout.skip_rows),
            parse_options=pacsv.ParseOptions(delimiter=layout.delimiter),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(wanted.values()),
                column_types=dict.fromkeys(text_roles, pa.string()),
                null_values=[""],  # "NaN" in a rating is a NaN (refused as such), not a silent null
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataValidationError(str(file), [f"cannot be read as {layout.name}: {exc}"]) from exc
    if len(raw) == 0:
        raise DataValidationError(str(file), [f"holds no ratings (read as {layout.name})"])
    users, items, ratings = (raw.column(wanted[r]) for r in ("user", "item", "rating"))
    parts = [users, pc.cast(items, pa.string())]
    if "timestamp" in wanted:
        parts.append(raw.column(wanted["timestamp"]))
    table = pa.table(
        {
            RECORD_ID: pc.binary_join_element_wise(*parts, ":"),
            SUBJECT_ID: users,
            ITEM_ID: items,
            RATING: ratings,
        }
    )
    table = validate_rows(table, str(file))  # types are checked here, so the casts below cannot fail
    log.info("read %d ratings from %s (%s)", len(table), file, layout.name.split(":")[0])
    return table.set_column(2, ITEM_ID, pc.cast(table.column(ITEM_ID), pa.int64())).set_column(
        3, RATING, pc.cast(table.column(RATING), pa.float32())
    )
