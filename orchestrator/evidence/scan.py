"""Storage scan: find any stored byte of a subject, in every object and every object version."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from typing import Literal

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from expunge.shards.identity import canonical_subject_id
from expunge.shards.rows import RECORD_ID, SUBJECT_DIGEST, SUBJECT_ID
from expunge.shards.store import ObjectStore
from expunge.shards.training import decode_checkpoint

__all__ = ["Finding", "ScanReport", "scan_store"]

log = logging.getLogger(__name__)

FindingKind = Literal[
    "incomplete-write",
    "rows",
    "placement",
    "manifest",
    "checkpoint-parameters",
    "checkpoint-lineage",
    "checkpoint-unverifiable",
    "registry-version",
]


class Finding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str
    version_id: str | None
    kind: FindingKind
    detail: str


class ScanReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    storage: str
    subject_digest: str
    objects_scanned: int
    findings: tuple[Finding, ...]

    @property
    def clean(self) -> bool:
        return not self.findings


def _records_sha256(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


#: JSON fields that hold Expunge's own bookkeeping values (version numbers, times, hashes,
#: states), never text from outside: a numeric subject id such as "2" equal to a registry
#: version "2" is not a trace of that person.
_BOOKKEEPING = re.compile(r"(^|_)(version|versions|at|sha256|status|stage|kind|sequence|seconds)$")


def _names(text: str, subject_id: str, quoted_id: str | None) -> bool:
    """Whether a JSON text holds the subject id as a string (a key or a value outside bookkeeping fields)."""
    try:
        document = json.loads(text)
    except ValueError:
        return quoted_id is not None and quoted_id in text  # not JSON after all: look at the text

    def walk(node: object, field: str) -> bool:
        if isinstance(node, str):
            return node == subject_id and not _BOOKKEEPING.search(field)
        if isinstance(node, dict):
            return any(key == subject_id or walk(value, key) for key, value in node.items())
        if isinstance(node, list):
            return any(walk(item, field) for item in node)
        return False

    return walk(document, "")


def scan_store(store: ObjectStore, subject_id: str | None, subject_digest: str) -> ScanReport:
    """Read every version of every object under the store and report traces of the subject.

    A checkpoint counts as holding the subject when its own parameters are keyed by the
    subject's digest, or when a slice it was trained on (its lineage) held the subject's
    rows; a lineage slice that no longer exists anywhere makes the checkpoint unverifiable,
    which is reported too. ``subject_id`` None scans for the digest alone (raw ids are not looked for).
    """
    # Stored shard data holds canonical ids (expunge.shards.identity): look for that form of the id.
    subject_id = canonical_subject_id(subject_id) if subject_id is not None else None
    findings: list[Finding] = []
    slice_holds_subject: dict[str, bool] = {}
    checkpoints: list[tuple[str, str | None, dict[str, object]]] = []
    versions = [v for v in store.list_versions() if not v.is_delete_marker]
    quoted_id = json.dumps(subject_id) if subject_id is not None else None
    for version in versions:
        data = store.get(version.key, version.version_id)
        where = (version.key, version.version_id)
        if version.key.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(data))
            hits = 0
            if SUBJECT_DIGEST in table.column_names:
                hits = max(hits, table.column(SUBJECT_DIGEST).to_pylist().count(subject_digest))
            if SUBJECT_ID in table.column_names and subject_id is not None:
                hits = max(hits, table.column(SUBJECT_ID).to_pylist().count(subject_id))
            if RECORD_ID in table.column_names:
                slice_holds_subject[_records_sha256(table.column(RECORD_ID).to_pylist())] = hits > 0
            if hits:
                kind: FindingKind = "placement" if version.key.startswith("placement/") else "rows"
                findings.append(
                    Finding(key=where[0], version_id=where[1], kind=kind, detail=f"{hits} row(s) of the subject")
                )
        elif version.key.endswith(".pt"):
            payload = decode_checkpoint(data)
            checkpoints.append((version.key, version.version_id, payload))
        elif version.key.endswith(".partial"):
            findings.append(
                Finding(key=where[0], version_id=where[1], kind="incomplete-write", detail="an interrupted write")
            )
        elif version.key.endswith(".json"):
            text = data.decode("utf-8", errors="replace")
            # Receipts, tombstones and the service's request journal are the audit trail: they name
            # erased subjects by digest on purpose (a raw id in them is still a finding).
            audit = version.key.startswith(("receipts/", "tombstones/", "journal/"))
            if (subject_id is not None and _names(text, subject_id, quoted_id)) or (
                subject_digest in text and not audit
            ):
                findings.append(
                    Finding(key=where[0], version_id=where[1], kind="manifest", detail="mentions the subject")
                )
    for key, version_id, payload in checkpoints:
        layout = payload.get("layout") or {}
        if subject_digest in json.dumps(layout):
            findings.append(
                Finding(
                    key=key,
                    version_id=version_id,
                    kind="checkpoint-parameters",
                    detail="holds parameters keyed by the subject",
                )
            )
        lineage = [str(h) for h in payload.get("lineage", [])]  # type: ignore[attr-defined]
        if any(slice_holds_subject.get(h) for h in lineage):
            findings.append(
                Finding(
                    key=key,
                    version_id=version_id,
                    kind="checkpoint-lineage",
                    detail="trained on a slice holding the subject",
                )
            )
        elif any(h not in slice_holds_subject for h in lineage):
            findings.append(
                Finding(
                    key=key,
                    version_id=version_id,
                    kind="checkpoint-unverifiable",
                    detail="trained on a slice that is no longer stored",
                )
            )
    log.info("scanned %d object version(s) under %s: %d finding(s)", len(versions), store.uri, len(findings))
    return ScanReport(
        storage=store.uri, subject_digest=subject_digest, objects_scanned=len(versions), findings=tuple(findings)
    )
