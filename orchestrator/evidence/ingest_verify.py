"""Verification of one ingest: its receipt, the shard versions it produced, and their re-derivation bit for bit.

``verify_ingest`` re-checks, from what the store holds now, what an ingest claims: its receipt
is stored and names the version the store published for it; the shards it retrained are
published at or past the versions it produced (untouched shards kept theirs); and each of
them, as published now, equals training from scratch on the rows it holds with the slice
sequence its manifest records (``evidence.rederive``, as an erasure's affected shards).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from expunge.orchestrator.catalog import INGEST_RECEIPT_PREFIX, Catalog, EnsembleManifest
from expunge.orchestrator.config import StorageConfig
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError, ExpungeError
from expunge.orchestrator.evidence.check_result import result as _result
from expunge.orchestrator.evidence.rederive import rederive_shards
from expunge.orchestrator.evidence.report import CheckName, CheckResult, check_row
from expunge.orchestrator.receipts import ErasureReceipt, IngestReceipt
from expunge.orchestrator.session import published

__all__ = ["IngestVerifyReport", "verify_ingest"]

log = logging.getLogger(__name__)


class IngestVerifyReport(BaseModel):
    """Everything ``expunge verify --request <ingest>`` found; ``status`` is ``failed`` when any check failed."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["ingest"] = "ingest"
    request_id: str
    storage: str
    checked_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    status: Literal["passed", "failed"]
    #: The receipt's status; None when the receipt could not be read.
    receipt_status: Literal["ingested", "nothing_new"] | None
    rows_added: int
    touched_shards: tuple[int, ...]
    #: The version the ingest published (or found, when nothing was new); None when unknown.
    model_version: int | None
    ensemble_version: int
    checks: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def check(self, name: CheckName) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def to_markdown(self) -> str:
        """The report for a non-engineer: what was checked, what was found."""
        if self.receipt_status == "ingested":
            what = (
                f"it added {self.rows_added} row(s) to shard(s) {', '.join(map(str, self.touched_shards))} and "
                f"published model version v{self.model_version}."
            )
        elif self.receipt_status == "nothing_new":
            what = "its batch held nothing new, so no shard retrained and no version was made."
        else:
            what = "its receipt could not be read."
        lines = [
            f"# Ingest verification: request `{self.request_id}`: {'PASSED' if self.passed else 'FAILED'}",
            "",
            f"Checked {self.checked_at} against the store `{self.storage}` (published model version "
            f"v{self.ensemble_version}). By its receipt, {what}",
            "",
            "| Check | Result | What was found |",
            "| --- | --- | --- |",
            *(check_row(c) for c in self.checks),
            "",
            "The ingest's rows themselves are not listed anywhere (the receipt keeps a keyed digest of the batch), "
            "so what is re-derived is each retrained shard as published now, from the rows it holds.",
        ]
        return "\n".join(lines) + "\n"


def _listed(shards: list[int]) -> str:
    return ", ".join(map(str, shards))


def _skipped(name: CheckName, why: str) -> CheckResult:
    return CheckResult(name=name, status="skipped", summary=why)


def _made_by(catalog: Catalog, made: EnsembleManifest, request_id: str) -> bool:
    """Whether ``made`` was published for this ingest: its own version, or the erasure it joined."""
    if made.kind == "ingest":
        return made.request_id == request_id
    if made.kind != "erasure":
        return False
    text = catalog.read_receipt(made.version)
    try:
        return text is not None and ErasureReceipt.model_validate_json(text).joined_ingest == request_id
    except ValidationError:  # an edited erasure receipt: the receipt log's walk names it
        return False


def _receipt_check(catalog: Catalog, receipt: IngestReceipt) -> tuple[CheckResult, EnsembleManifest | None]:
    """The stored receipt against the version it names; returns the check and that version's manifest."""
    key = f"{INGEST_RECEIPT_PREFIX}/{receipt.request_id}.json"
    after, before = receipt.model_version_after, receipt.model_version_before
    versions = set(catalog.versions())
    if after is None or after not in versions:
        problem = f"the receipt names model version {after}, which the store never published"
        return _result("ingest_receipt", [problem], "", {"key": key}), None
    made = catalog.read(after)
    problems = []
    if receipt.status == "nothing_new":
        if after != before:
            problems.append(f"the receipt says nothing was new, yet names versions {before} and {after}")
        summary = f"The receipt `{key}` is in the store; nothing was new, and version v{after} stayed published then."
        return _result("ingest_receipt", problems, summary, {"key": key, "version": after}), made
    if not _made_by(catalog, made, receipt.request_id):
        problems.append(f"version v{after} was published by {made.kind} {made.request_id!r}, not by this ingest")
    if made.parent_version != before:
        problems.append(f"version v{after} follows v{made.parent_version}, but the receipt says v{before}")
    if made.kind == "ingest" and before is not None and before in versions:
        grown = made.rows - catalog.read(before).rows
        if grown != receipt.rows_added:
            problems.append(
                f"version v{after} holds {grown} row(s) more than v{before}; the receipt says {receipt.rows_added}"
            )
    summary = (
        f"The receipt `{key}` is in the store and names version v{after}, which the store published for this "
        f"ingest ({made.kind}, after v{before}"
        + (f", {receipt.rows_added} row(s) more)." if made.kind == "ingest" else ").")
    )
    # A version this ingest did not make: its shards say nothing about the ingest.
    return _result("ingest_receipt", problems, summary, {"key": key, "version": after}), None if problems else made


def _versions_check(
    catalog: Catalog, receipt: IngestReceipt, made: EnsembleManifest, latest: EnsembleManifest
) -> CheckResult:
    """Each retrained shard at its new version then, and published at or past it now; no other shard changed."""
    number = receipt.model_version_before
    before = catalog.read(number) if number is not None and number in catalog.versions() else None
    problems, rows = [], []
    for shard in receipt.shards:
        produced, now = made.shard_versions[shard.shard], latest.shard_versions[shard.shard]
        rows.append({"shard": shard.shard, "produced": produced, "published": now})
        if before is not None and before.shard_versions[shard.shard] == produced:
            problems.append(f"shard {shard.shard} kept version {produced}: the ingest made no new version of it")
        if now < produced:
            problems.append(f"shard {shard.shard} is published at version {now}, before the {produced} the ingest made")
        try:
            slices = len(catalog.shard_manifest(shard.shard, produced).slices)
        except ExpungeError as exc:
            problems.append(f"the manifest of shard {shard.shard} version {produced} cannot be read ({exc})")
            continue
        if shard.slices_after and slices != shard.slices_after:
            problems.append(
                f"shard {shard.shard} version {produced} lists {slices} slice(s); the receipt says {shard.slices_after}"
            )
    if made.kind == "ingest" and before is not None:
        untouched = [s for s in receipt.untouched_shards if made.shard_versions[s] != before.shard_versions[s]]
        problems += [f"shard {s} changed in v{made.version}, yet the receipt lists it untouched" for s in untouched]
    moved = [r for r in rows if r["published"] > r["produced"]]
    later = (
        "; later commits moved " + ", ".join(f"shard {r['shard']} on to version {r['published']}" for r in moved)
        if moved
        else "; none has changed since"
    )
    summary = (
        "The ingest made version "
        + ", ".join(f"{r['produced']} of shard {r['shard']}" for r in rows)
        + " (each listing the slices the receipt says)"
        + (", left the other shards as they were" if made.kind == "ingest" and before is not None else "")
        + f"{later}."
    )
    return _result("shard_versions", problems, summary, {"shards": rows})


def _exactness(
    catalog: Catalog, receipt: IngestReceipt, made: EnsembleManifest, latest: EnsembleManifest
) -> CheckResult:
    """The retrained shards, as published now, re-derived from scratch (``rederive_shards``)."""
    shards = [s.shard for s in receipt.shards if s.shard < len(latest.shard_versions)]
    results = [r.result for r in rederive_shards(catalog, latest, shards).values()]
    problems = [
        f"shard {r.shard} differs from a from-scratch retraining: {r.first_difference}" for r in results if not r.exact
    ]
    moved = [s for s in shards if latest.shard_versions[s] != made.shard_versions[s]]
    kept = [s for s in shards if s not in moved]
    if not moved:
        which = f"Shard(s) {_listed(shards)}, exactly as the ingest left them,"
    elif not kept:
        which = f"Shard(s) {_listed(shards)}, as published now (later commits moved each on since the ingest),"
    else:
        which = (
            f"Shard(s) {_listed(kept)} (exactly as the ingest left them) and {_listed(moved)} (as published now: "
            "moved on since)"
        )
    summary = (
        f"{which} retrained from scratch on the rows they hold with the slice sequence their manifests record: "
        f"{sum(r.checkpoints_compared for r in results)} checkpoint(s), "
        f"{sum(r.tensors_compared for r in results)} tensors, all bit-for-bit identical to the live model."
    )
    return _result("exactness", problems, summary, {"shards": [r.model_dump() for r in results]})


def verify_ingest(storage: StorageConfig | str, request_id: str, hasher: SubjectHasher) -> IngestVerifyReport:
    """Check one ingest: its receipt, the shard versions it produced, and the shards it retrained, bit for bit.

    Re-derives each retrained shard in this process (about one shard's training each); reads the
    ensemble manifests between the ingest and now. Writes nothing.

    Raises:
        ConfigError: no published store, a key other than the store's, or no receipt of ``request_id``.
        StorageCorruptError: a manifest is unreadable.
    """
    catalog, latest = published(storage, hasher)
    text = catalog.read_ingest_receipt(request_id)
    if text is None:
        raise ConfigError(
            f"no ingest receipt of request {request_id!r} in {catalog.store.uri} ({INGEST_RECEIPT_PREFIX}/): check "
            "the request id (`expunge ingest` prints it in its receipt) and --storage"
        )
    checks: list[CheckResult] = []
    try:
        receipt: IngestReceipt | None = IngestReceipt.model_validate_json(text)
    except ValidationError as exc:
        receipt = None
        summary = f"the stored receipt is not an ingest receipt ({exc.error_count()} problem(s)): it was edited"
        checks.append(CheckResult(name="ingest_receipt", status="failed", summary=summary))
    made = None
    if receipt is not None:
        found, made = _receipt_check(catalog, receipt)
        checks.append(found)
    if receipt is None or made is None:
        why = "The receipt could not be matched to a published version, so nothing more can be checked."
        checks += [_skipped("shard_versions", why), _skipped("exactness", why)]
    elif receipt.status == "nothing_new" or not receipt.shards:
        why = "The batch held nothing new: no shard retrained and no version was made."
        checks += [_skipped("shard_versions", why), _skipped("exactness", why)]
    else:
        checks += [_versions_check(catalog, receipt, made, latest), _exactness(catalog, receipt, made, latest)]
    uri = catalog.store.uri
    report = IngestVerifyReport(
        request_id=request_id,
        storage=uri if "://" in uri else str(Path(uri).resolve()),
        status="failed" if any(c.status == "failed" for c in checks) else "passed",
        receipt_status=receipt.status if receipt is not None else None,
        rows_added=receipt.rows_added if receipt is not None else 0,
        touched_shards=tuple(receipt.touched_shards) if receipt is not None else (),
        model_version=receipt.model_version_after if receipt is not None else None,
        ensemble_version=latest.version,
        checks=tuple(checks),
    )
    log.info("ingest %s verified: %s", request_id, report.status)
    return report
