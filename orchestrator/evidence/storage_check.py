"""The storage check of ``expunge verify --request``: no trace of the person in any stored version, and tombstoned."""

from __future__ import annotations

import logging

from expunge.orchestrator.catalog import Catalog, TombstoneEntry
from expunge.orchestrator.evidence.check_result import result as _result
from expunge.orchestrator.evidence.report import CheckResult
from expunge.orchestrator.evidence.scan import ScanCoverage, scan_store
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.shards.store import ObjectStore

__all__ = ["storage_check"]

log = logging.getLogger(__name__)


def storage_check(
    store: ObjectStore, catalog: Catalog, receipt: ErasureReceipt, subject_id: str | None, subject_digest: str | None
) -> CheckResult:
    """Scan the store for each of the receipt's subjects (the raw id for ``subject_digest``'s) and check tombstones.

    Returns the ``storage`` check: failed when any trace remains (each finding with its
    object, version, location and rule) or an erased digest is not on the tombstone list.
    """
    findings = []
    scanned = 0
    coverage = ScanCoverage()
    for digest in receipt.subject_digests:
        report = scan_store(store, subject_id if digest == subject_digest else None, digest)
        scanned = report.objects_scanned
        coverage = report.coverage if report.coverage.raw_id or not coverage.raw_id else coverage
        findings += [f.model_dump() | {"subject_digest": digest} for f in report.findings]
    erased = [d for d in receipt.subject_digests if d not in receipt.not_found_digests]
    tombstoned = catalog.tombstones()
    log_entries = _tombstone_log(catalog)
    own = [e.sequence for e in log_entries if e.action == "erased" and e.request_id == receipt.request_id]
    # Only a re-admission recorded after this request's own tombstone excuses a missing one.
    readmitted = {
        d
        for entry in log_entries
        if entry.action == "readmitted" and own and entry.sequence > min(own)
        for d in entry.subject_digests
        if d in erased
    }
    untombstoned = [d for d in erased if d not in tombstoned and d not in readmitted]
    if erased and not own:
        untombstoned = erased  # the request's own tombstone entry is gone
    problems = (
        [
            f"{len(findings)} trace(s) of the person remain, e.g. {findings[0]['kind']} in {findings[0]['key']}"
            + (f" ({findings[0]['location']}, rule {findings[0]['rule']})" if findings[0]["location"] else "")
        ]
        if findings
        else []
    )
    if untombstoned:
        problems.append(f"{len(untombstoned)} erased digest(s) are missing from the tombstone list")
    return _result(
        "storage",
        problems,
        f"Nothing of the person remains in {coverage.describe()}"
        + (
            ", and the person is on the erased list, so no retraining can bring them back."
            if erased and all(d in tombstoned for d in erased)
            else "."
        ),
        {
            "objects_scanned": scanned,
            "coverage": coverage.model_dump(),
            "findings": findings,
            "untombstoned_digests": untombstoned,
            "readmitted_digests": sorted(readmitted),
        },
    )


def _tombstone_log(catalog: Catalog) -> list[TombstoneEntry]:
    keys = sorted(k for k in catalog.store.list_keys("tombstones") if k.endswith(".json"))
    return [TombstoneEntry.model_validate_json(catalog.store.get(k)) for k in keys]
