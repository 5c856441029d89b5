"""Prepare an ingest batch: validate it, digest its subjects, refuse erased people, drop rows already stored.

Nothing here writes to the store. ``prepare_batch`` returns what to add and what was left out,
counted; every problem with the rows is one ``DataValidationError`` listing them all.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from expunge.orchestrator.catalog import Catalog, EnsembleManifest
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import DataValidationError, ExpungeError, PersonalDataInTextError
from expunge.orchestrator.screening import names_subject
from expunge.orchestrator.training.partition import digest_subjects
from expunge.shards.models import task_of
from expunge.shards.rows import RECORD_ID, SUBJECT_DIGEST, SUBJECT_ID, validate_rows

__all__ = [
    "PreparedBatch",
    "StoredRecords",
    "names_stored_subject",
    "prepare_batch",
    "split_by_cell",
    "stored_records",
]

log = logging.getLogger(__name__)

_READERS = 8


@dataclass(frozen=True)
class StoredRecords:
    """Record id -> subject digest of every row a published version holds (read once per version)."""

    version: int
    owner: dict[str, str]

    def added(self, version: int, rows: pa.Table) -> StoredRecords:
        """These records plus ``rows`` (canonical, with ``subject_digest``), as of ``version``."""
        owner = dict(self.owner)
        owner.update(zip(rows.column(RECORD_ID).to_pylist(), rows.column(SUBJECT_DIGEST).to_pylist(), strict=True))
        return StoredRecords(version, owner)

    def without(self, version: int, digests: set[str]) -> StoredRecords:
        """These records less those of ``digests`` (erased), as of ``version``."""
        return StoredRecords(version, {r: d for r, d in self.owner.items() if d not in digests})


def stored_records(catalog: Catalog, manifest: EnsembleManifest) -> StoredRecords:
    """Read the record ids and subject digests of every slice ``manifest`` publishes (8 reads at a time)."""
    keys = [
        entry.key
        for shard, version in enumerate(manifest.shard_versions)
        for entry in catalog.shard_manifest(shard, version).slices
    ]

    def read(key: str) -> pa.Table:
        return pq.read_table(io.BytesIO(catalog.store.get(key)), columns=[RECORD_ID, SUBJECT_DIGEST])

    with ThreadPoolExecutor(_READERS) as pool:
        tables = list(pool.map(read, keys))
    owner: dict[str, str] = {}
    for table in tables:
        owner.update(zip(table.column(RECORD_ID).to_pylist(), table.column(SUBJECT_DIGEST).to_pylist(), strict=True))
    return StoredRecords(manifest.version, owner)


@dataclass(frozen=True)
class PreparedBatch:
    """A validated batch: the rows to add (canonical, with ``subject_digest``) and what was left out.

    ``subject_rows`` maps each digest in ``rows`` to its row count; ``digest`` is the keyed
    digest of the whole batch (its sorted record ids).
    """

    rows: pa.Table
    subject_rows: dict[str, int]
    digest: str
    rows_in_batch: int
    rows_refused_erased: int
    subjects_refused_erased: int
    rows_already_stored: int


def prepare_batch(
    rows: pa.Table,
    manifest: EnsembleManifest,
    hasher: SubjectHasher,
    erased: set[str],
    stored: Mapping[str, str],
    source: str = "the ingest batch",
    request_id: str | None = None,
    schema: pa.Schema | None = None,
) -> PreparedBatch:
    """Validate ``rows`` for ``manifest``'s model and split them into rows to add and rows left out.

    Rows of ``erased`` subjects are refused (counted, never stored); rows whose record id is in
    ``stored`` under the same subject are left out (a batch given twice adds nothing).

    Raises:
        DataValidationError: every problem at once: missing or mistyped columns, duplicate or
            null record ids, null or refused subject ids, NaN or out-of-range targets, item ids
            outside the model's catalogue, no rows, or a record id stored for another subject.
        PersonalDataInTextError: ``request_id`` names a subject of the batch (it is kept in the
            receipt's object name and the version's manifest).

    ``schema``: the schema of the store's slices; the rows are cast to it (a batch's float64
    ratings join float32 slices as float32), and a column it lacks is refused: it would be stored
    with the rows, out of reach of the identity rule.
    """
    problems: list[str] = []
    if schema is not None:
        extra = [str(c)[:40] for c in rows.column_names if c not in schema.names]
        if extra:
            kept = [n for n in schema.names if n != SUBJECT_DIGEST]
            problems.append(f"column(s) {extra[:10]} are not stored by this store (it stores {kept}); leave them out")
            rows = rows.select([c for c in rows.column_names if c in schema.names])
    try:
        rows = validate_rows(rows, source, task_of(manifest.model), model=manifest.model)
    except DataValidationError as exc:
        raise DataValidationError(source, [*problems, *exc.problems]) from exc
    if problems:
        raise DataValidationError(source, problems)
    if request_id is not None and names_subject(request_id, set(rows.column(SUBJECT_ID).to_pylist())):
        raise PersonalDataInTextError(
            "the request id names a subject of the batch; it is stored with the receipt and the model version, so "
            "use a batch label instead (e.g. daily-20261203), or omit it. Nothing was stored"
        )
    if len(rows) == 0:
        raise DataValidationError(source, ["the batch has no rows; give a file, folder or prefix with new rows"])
    subjects = digest_subjects(hasher, rows.column(SUBJECT_ID))
    rows = rows.append_column(SUBJECT_DIGEST, subjects.column())
    if schema is not None:
        try:
            rows = rows.select(schema.names).cast(schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError) as exc:
            raise DataValidationError(
                source, [f"the rows cannot take the types the store keeps ({schema}): {str(exc)[:200]}"]
            ) from exc
    ids = rows.column(RECORD_ID).to_pylist()
    digest = hasher.label(json.dumps(sorted(ids)), "ingest-batch")  # unambiguous, whatever a record id holds
    owners = np.asarray([stored.get(r) or "" for r in ids])
    mine = np.asarray(subjects.distinct, dtype=str)[subjects.index] if len(ids) else np.zeros(0, str)
    known = owners != ""
    foreign = known & (owners != mine)
    if foreign.any():
        example = int(np.flatnonzero(foreign)[0])
        raise DataValidationError(
            source,
            [
                f"{int(foreign.sum())} record id(s) are already stored for another subject, e.g. row {example} "
                "(0-based); record ids must be unique across the store: give new rows new record ids"
            ],
        )
    refused = np.isin(mine, np.asarray(sorted(erased), dtype=str)) if erased else np.zeros(len(ids), bool)
    keep = ~known & ~refused
    kept = rows.filter(pa.array(keep))
    counts: dict[str, int] = {}
    for d in mine[keep].tolist():
        counts[d] = counts.get(d, 0) + 1
    if refused.any():  # by design (erased people stay erased), counted in the receipt: no warning
        log.info("refused %d row(s) of %d erased subject(s) in the batch", int(refused.sum()), len(set(mine[refused])))
    return PreparedBatch(
        rows=kept,
        subject_rows=counts,
        digest=digest,
        rows_in_batch=len(ids),
        rows_refused_erased=int(refused.sum()),
        subjects_refused_erased=len(set(mine[refused].tolist())),
        rows_already_stored=int((known & ~refused).sum()),
    )


def names_stored_subject(text: str, hasher: SubjectHasher, known: Callable[[str], bool]) -> bool:
    """Whether ``text`` (a request id) names, as one of its dash/dot/underscore-delimited runs, a subject
    whose digest ``known`` says the store holds or erased. The store keeps digests only, so every
    run of whole tokens is digested and looked up.
    """
    tokens = [t for t in re.split(r"([-_.:/ ])", text)]
    words = tokens[::2]
    seps = tokens[1::2]
    for start in range(len(words)):
        candidate = ""
        for end in range(start, min(len(words), start + 8)):
            candidate = words[start] if end == start else candidate + seps[end - 1] + words[end]
            if not candidate:
                continue
            try:
                digest = hasher.digest(candidate)
            except ExpungeError:
                continue
            if known(digest):
                return True
    return False


def split_by_cell(rows: pa.Table, cells: Mapping[str, tuple[int, int]]) -> dict[int, dict[int, pa.Table]]:
    """``{shard: {slice: rows}}`` of canonical rows, each subject's rows at its ``(shard, slice)``."""
    digests = rows.column(SUBJECT_DIGEST).to_pylist()
    codes = np.asarray([cells[d][0] * 1_000_003 + cells[d][1] for d in digests], dtype=np.int64)
    out: dict[int, dict[int, pa.Table]] = {}
    for code in np.unique(codes).tolist():
        shard, slice_ = divmod(int(code), 1_000_003)
        out.setdefault(shard, {})[slice_] = rows.filter(pa.array(codes == code))
    return out
