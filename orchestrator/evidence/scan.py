"""Storage scan: find any trace of a subject in every object and every object version of a store.

Each place is searched the way an identity can be in it (docs/verification.md, "Storage"):
Parquet subject columns by exact value under the identity rule (``subject_id``) and by keyed
digest (``subject_digest``); JSON documents field by field and other text line by line by the
bounded token rule (``expunge.orchestrator.evidence.trace_rule``); checkpoints by their
lineage, their digest-keyed layout and the strings of their pickled payload; object names by
the bounded token rule on their last part. Logs and MLflow are searched by
``expunge.orchestrator.evidence.scan_outside``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from expunge.orchestrator.errors import StorageCorruptError
from expunge.orchestrator.evidence.trace_rule import (
    json_paths_containing,
    json_traces,
    object_name_holds,
    text_lines_holding,
)
from expunge.shards.identity import canonical_subject_column, canonical_subject_id
from expunge.shards.rows import RECORD_ID, SUBJECT_DIGEST, SUBJECT_ID
from expunge.shards.store import ObjectStore
from expunge.shards.training import decode_checkpoint

__all__ = ["Finding", "FindingKind", "ScanCoverage", "ScanReport", "TraceRule", "scan_store"]

log = logging.getLogger(__name__)

#: Seconds a ``.partial`` object found by the scan may take to be renamed by its (live) writer.
_PARTIAL_SETTLE_S = 1.0

FindingKind = Literal[
    "unreadable",
    "incomplete-write",
    "rows",
    "placement",
    "manifest",
    "text",
    "object-name",
    "checkpoint-parameters",
    "checkpoint-strings",
    "checkpoint-lineage",
    "checkpoint-unverifiable",
    "registry-version",
    "mlflow-run",
    "mlflow-model",
    "log",
]

#: Which rule found a trace: ``typed-id`` a subject column's value equals the id under the
#: identity rule; ``digest`` the keyed digest; ``bounded-token`` the id as a whole token in
#: text (trace_rule); ``lineage`` a checkpoint trained on a slice that held the subject (or one
#: no longer stored); ``write-state`` an interrupted write; ``registry-check`` a model version
#: that held the subject can still be loaded or keeps files.
TraceRule = Literal["typed-id", "digest", "bounded-token", "lineage", "write-state", "registry-check"]

#: Receipts, tombstones and the service's journal are the audit trail: they name erased
#: subjects by digest on purpose (a raw id in them is still a trace).
_AUDIT_TRAIL = ("receipts/", "tombstones/", "journal/")
_BINARY_PROBE = 8192


class Finding(BaseModel):
    """One trace: where (object key and version, and ``location`` inside it), what kind, which rule.

    ``location`` is a column (``column subject_id``), a JSON path (``$.reason``), a line
    (``line 12``) or an MLflow param or tag (``tag note``); it never holds the subject's id.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str
    version_id: str | None
    kind: FindingKind
    detail: str
    rule: TraceRule
    location: str | None = None


class ScanCoverage(BaseModel):
    """What a scan read, by kind of place (counts)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    raw_id: bool = False  # whether the raw id was looked for (else the digest alone)
    object_versions: int = 0
    tables: int = 0
    json_documents: int = 0
    checkpoints: int = 0
    text_objects: int = 0
    log_files: int = 0
    log_lines: int = 0
    mlflow_runs: int = 0
    mlflow_model_versions: int = 0

    def describe(self) -> str:
        """One sentence: what was read and how (for the CLI and verify's storage check)."""
        by = "by typed id and digest" if self.raw_id else "by digest"
        parts = [
            f"{self.object_versions} stored object version(s): {self.tables} Parquet table(s) {by} in their subject "
            f"columns, {self.json_documents} JSON document(s) field by field, {self.checkpoints} checkpoint(s) "
            f"(lineage, digest-keyed layout, pickled strings), {self.text_objects} other object(s) line by line"
        ]
        if self.log_files:
            parts.append(f"{self.log_files} log file(s) ({self.log_lines} line(s))")
        if self.mlflow_runs or self.mlflow_model_versions:
            parts.append(
                f"the params and tags of {self.mlflow_runs} MLflow run(s) and {self.mlflow_model_versions} "
                "model version(s)"
            )
        text = "; ".join(parts)
        return text + ("" if self.raw_id else " (raw id not given: free text, logs and MLflow not searched)")


class ScanReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    storage: str
    subject_digest: str
    objects_scanned: int
    findings: tuple[Finding, ...]
    coverage: ScanCoverage = ScanCoverage()

    @property
    def clean(self) -> bool:
        return not self.findings

    def merged(self, findings: tuple[Finding, ...], **coverage: int) -> ScanReport:
        """This report with more findings and more of the coverage counts (e.g. ``log_files=2``)."""
        counts = self.coverage.model_dump()
        counts.update({name: counts[name] + value for name, value in coverage.items()})
        return self.model_copy(
            update={"findings": self.findings + findings, "coverage": ScanCoverage.model_validate(counts)}
        )


def _records_sha256(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def _matching_rows(column: pa.ChunkedArray | pa.Array, value: str) -> list[int]:
    if len(column) == 0:
        return []  # pyarrow's compare crashes on a chunked array without chunks (an emptied slice)
    mask = pc.fill_null(pc.equal(column, pa.scalar(value, pa.string())), False)
    return [int(i) for i in pc.indices_nonzero(mask).to_pylist()]


def _column_hits(
    table: pa.Table, subject_id: str | None, subject_digest: str
) -> list[tuple[str, TraceRule, list[int]]]:
    """``(column, rule, matching row indexes)`` for each subject column of ``table`` that holds the subject."""
    hits: list[tuple[str, TraceRule, list[int]]] = []
    if subject_id is not None and SUBJECT_ID in table.column_names:
        canonical, problems = canonical_subject_column(table.column(SUBJECT_ID), SUBJECT_ID)
        if problems and not pa.types.is_string(canonical.type):
            canonical = pc.cast(canonical, pa.string())  # an old or foreign table: compare its text
        hits.append((SUBJECT_ID, "typed-id", _matching_rows(canonical, subject_id)))
    if SUBJECT_DIGEST in table.column_names:
        hits.append((SUBJECT_DIGEST, "digest", _matching_rows(table.column(SUBJECT_DIGEST), subject_digest)))
    return [hit for hit in hits if hit[2]]


def _text_of(data: bytes) -> str | None:
    """The text of an object, or None for binary data (a NUL byte near the start)."""
    if b"\0" in data[:_BINARY_PROBE]:
        return None
    return data.decode("utf-8", errors="replace")


def scan_store(store: ObjectStore, subject_id: str | None, subject_digest: str) -> ScanReport:
    """Read every version of every object under the store and report traces of the subject.

    ``subject_id`` is canonicalised with the identity rule (None: the digest alone is looked
    for, raw ids nowhere). A checkpoint counts as holding the subject when its own parameters
    are keyed by the subject's digest, when a string of its pickled payload holds the id, or
    when a slice it was trained on (its lineage) held the subject's rows; a lineage slice that
    no longer exists anywhere makes the checkpoint unverifiable, which is reported too. The
    temporary object of an atomic write (``.partial``) is a trace (an interrupted write) when it is
    still there up to 1 s after the scan: a live writer's write under way is not.

    Raises:
        InvalidSubjectIdError: ``subject_id`` is refused by the identity rule.
        StorageUnavailable: the store cannot be read.
    """
    subject_id = canonical_subject_id(subject_id) if subject_id is not None else None
    findings: list[Finding] = []
    counts = dict.fromkeys(("tables", "json_documents", "checkpoints", "text_objects"), 0)
    slice_holds_subject: dict[str, bool] = {}
    checkpoints: list[tuple[str, str | None, dict[str, object]]] = []
    versions = [v for v in store.list_versions() if not v.is_delete_marker]

    def found(key: str, version_id: str | None, kind: FindingKind, detail: str, rule: TraceRule, where: str) -> None:
        findings.append(Finding(key=key, version_id=version_id, kind=kind, detail=detail, rule=rule, location=where))

    partials: list[tuple[str, str | None]] = []
    for version in versions:
        key, version_id = version.key, version.version_id
        if subject_id is not None and object_name_holds(key, subject_id):
            found(key, version_id, "object-name", "the object's name holds the id", "bounded-token", "object name")
        if key.endswith(".partial"):  # judged after the scan: a writer's write under way is gone by then
            partials.append((key, version_id))
            continue
        data = store.get(key, version_id)
        audit = key.startswith(_AUDIT_TRAIL)
        if key.endswith(".parquet"):
            counts["tables"] += 1
            try:
                table = pq.read_table(io.BytesIO(data))
            except (pa.ArrowException, OSError) as exc:  # damaged: what it holds cannot be told
                found(
                    key,
                    version_id,
                    "unreadable",
                    f"not a readable Parquet file ({type(exc).__name__})",
                    "write-state",
                    "the whole object",
                )
                continue
            hits = _column_hits(table, subject_id, subject_digest)
            if RECORD_ID in table.column_names:
                slice_holds_subject[_records_sha256(table.column(RECORD_ID).to_pylist())] = bool(hits)
            kind: FindingKind = "placement" if key.startswith("placement/") else "rows"
            for column, rule, rows in hits:
                detail = f"{len(rows)} row(s) of the subject, first at row {rows[0]}"
                found(key, version_id, kind, detail, rule, f"column {column}")
        elif key.endswith(".pt"):
            counts["checkpoints"] += 1
            try:
                checkpoints.append((key, version_id, decode_checkpoint(data)))
            except StorageCorruptError:  # damaged: what it holds cannot be told
                found(key, version_id, "unreadable", "not a readable checkpoint", "write-state", "the whole object")
        elif (text := _text_of(data)) is None:
            log.debug("not text, not searched: %s", key)
        elif key.endswith(".json") and (document := _json(text)) is not None:
            counts["json_documents"] += 1
            for path in json_traces(document, subject_id) if subject_id is not None else []:
                found(key, version_id, "manifest", "the id in a field", "bounded-token", path)
            for path in [] if audit else json_paths_containing(document, subject_digest):
                found(key, version_id, "manifest", "the subject's digest", "digest", path)
        else:
            counts["text_objects"] += 1
            lines = text.splitlines()
            for number in text_lines_holding(lines, subject_id) if subject_id is not None else []:
                found(key, version_id, "text", "the id in a line", "bounded-token", f"line {number}")
            for number in [] if audit else [n for n, line in enumerate(lines, 1) if subject_digest in line]:
                found(key, version_id, "text", "the subject's digest", "digest", f"line {number}")
    for key, version_id, payload in checkpoints:
        findings += _checkpoint_findings(key, version_id, payload, subject_id, subject_digest, slice_holds_subject)
    for key, version_id in _interrupted(store, partials):
        found(key, version_id, "incomplete-write", "an interrupted write", "write-state", "the whole object")
    coverage = ScanCoverage(raw_id=subject_id is not None, object_versions=len(versions), **counts)
    log.info("scanned %d object version(s) under %s: %d finding(s)", len(versions), store.uri, len(findings))
    return ScanReport(
        storage=store.uri,
        subject_digest=subject_digest,
        objects_scanned=len(versions),
        findings=tuple(findings),
        coverage=coverage,
    )


def _interrupted(store: ObjectStore, partials: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """The temporary objects of atomic writes (``.partial``) still there ``_PARTIAL_SETTLE_S`` seconds after the scan.

    A live writer (a service beside this scan) renames its temporary object within milliseconds;
    one left by a writer that died stays, and is a trace of whatever it was writing.
    """
    deadline = time.monotonic() + _PARTIAL_SETTLE_S
    left = [(key, version_id) for key, version_id in partials if store.exists(key)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [(key, version_id) for key, version_id in left if store.exists(key)]
    if len(left) < len(partials):
        log.debug("%d write(s) under way during the scan finished", len(partials) - len(left))
    return left


def _json(text: str) -> object | None:
    try:
        return json.loads(text)
    except ValueError:
        return None  # not JSON after all: read as text


def _checkpoint_findings(
    key: str,
    version_id: str | None,
    payload: dict[str, object],
    subject_id: str | None,
    subject_digest: str,
    slice_holds_subject: dict[str, bool],
) -> list[Finding]:
    def finding(kind: FindingKind, detail: str, rule: TraceRule, where: str) -> Finding:
        return Finding(key=key, version_id=version_id, kind=kind, detail=detail, rule=rule, location=where)

    findings = [
        finding("checkpoint-parameters", "holds parameters keyed by the subject", "digest", "$.layout" + path[1:])
        for path in json_paths_containing(payload.get("layout") or {}, subject_digest)
    ]
    if subject_id is not None:
        findings += [
            finding("checkpoint-strings", "a pickled string holds the id", "bounded-token", path)
            for path in json_traces(payload, subject_id)
        ]
    raw_lineage = payload.get("lineage", [])
    lineage = [str(h) for h in raw_lineage] if isinstance(raw_lineage, list | tuple) else []
    if any(slice_holds_subject.get(h) for h in lineage):
        findings.append(finding("checkpoint-lineage", "trained on a slice holding the subject", "lineage", "$.lineage"))
    elif any(h not in slice_holds_subject for h in lineage):
        findings.append(
            finding("checkpoint-unverifiable", "trained on a slice that is no longer stored", "lineage", "$.lineage")
        )
    return findings
