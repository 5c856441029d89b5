"""What ``expunge chaos`` checks once its faults stop: every acknowledged request against the store's durable record.

Read-only over a store nobody writes any more (the service is stopped first). Each check is
one rule of issue 18's campaign: erased exactly once, nothing lost, stuck or brought back, every
receipt true, every shard bit-exact against training from scratch on its recorded slices, no
trace of an erased subject anywhere, and no purged model version loadable.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from expunge.orchestrator.catalog import Catalog, EnsembleManifest
from expunge.orchestrator.config import StorageConfig
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.evidence.receipt_chain import CHAIN_PREFIX, walk_chain
from expunge.orchestrator.evidence.rederive import rederive_shards
from expunge.orchestrator.evidence.scan import scan_store
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.service.journal import Journal, RequestStatus
from expunge.shards.rows import RECORD_ID
from expunge.shards.store import ObjectStore

__all__ = ["ChaosSummary", "Ingested", "Submitted", "check_campaign"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    """One request the campaign sent: its subject, whether the data holds it, and the rows it had."""

    index: int
    subject: str
    expected_rows: int  # 0: the subject is not in the data (a not_found receipt is expected)
    request_id: str | None  # None: never acknowledged (every submit attempt failed)
    final: RequestStatus | None = None  # the status the client saw last


@dataclass(frozen=True)
class Ingested:
    """One ingest the campaign sent through the SDK: its request id, its rows (record id -> subject), and whether acknowledged."""

    request_id: str
    rows: Mapping[str, str]
    acknowledged: bool


class ChaosSummary(BaseModel):
    """The one JSON object ``expunge chaos`` prints; exit 1 when ``violations`` is not empty."""

    model_config = ConfigDict(extra="forbid")
    #: Requests submitted; of them, acknowledged (some submit attempt succeeded) and, of those, naming
    #: someone the store held (each must be erased exactly once) or nobody (each must get not_found).
    requests: int
    acknowledged: int
    not_found_expected: int
    erased_exactly_once: int
    lost: int
    stuck: int
    resurrected: int
    wrong_receipts: int
    loadable_purged: int
    scan_clean: bool
    exact_shards: int
    shards: int
    writers_refused: int
    writers_admitted: int
    #: Ingests sent, acknowledged, and rows of them stored exactly once (people not erased) or never (erased).
    ingests: int = 0
    ingests_acknowledged: int = 0
    ingested_rows_right: int = 0
    ingested_rows: int = 0
    faults_injected: dict[str, int]
    seconds: float
    violations: list[str]


def _found(receipt_digests: Sequence[str], not_found: Sequence[str]) -> set[str]:
    return set(receipt_digests) - set(not_found)


def check_campaign(
    storage: StorageConfig,
    hasher: SubjectHasher,
    submitted: Sequence[Submitted],
    writers: Mapping[str, int],
    faults: Mapping[str, int],
    seconds: float,
    ingested: Sequence[Ingested] = (),
) -> ChaosSummary:
    """Check every acknowledged request against the store (reached directly, not through the fault proxy).

    ``writers``: how many concurrent writers were refused and admitted (``refused``, ``admitted``).
    """
    store = ObjectStore(storage)
    catalog = Catalog(store)
    journal = Journal(store)
    latest = catalog.latest()
    assert latest is not None, "the campaign trains the store first"
    placement = catalog.read_placement(latest.placement_key).cells()
    tombstones = catalog.tombstones()
    violations: list[str] = []

    # Erasures per digest, counted in the receipt log (one chained receipt per committed request or batch).
    chain = walk_chain(store)
    if not chain.intact:
        violations.append(f"the receipt log is broken: {chain.broken[:2]}")
    erasures: Counter[str] = Counter()
    for key in store.list_keys(CHAIN_PREFIX):
        receipt = ErasureReceipt.model_validate_json(store.get(key))
        if receipt.status == "erased":
            erasures.update(_found(receipt.subject_digests, receipt.not_found_digests))

    acknowledged = [s for s in submitted if s.request_id is not None]
    exactly_once = lost = stuck = resurrected = wrong = 0
    for item in acknowledged:
        assert item.request_id is not None
        digest = hasher.digest(item.subject)
        status = journal.status(item.request_id)
        if status is None or status.stage == "failed":
            lost += 1
            violations.append(f"request {item.index} ({item.request_id}) is {status.stage if status else 'missing'}")
            continue
        if status.stage == "accepted" or status.pending or item.final is None or item.final.state != "done":
            stuck += 1
            violations.append(f"request {item.index} ({item.request_id}) is {status.state}, not done")
        stored = status.receipt
        if item.expected_rows:
            if digest in placement:
                resurrected += 1
                violations.append(f"request {item.index}: its subject is in the published placement")
            if digest not in tombstones:
                lost += 1
                violations.append(f"request {item.index}: its subject is not tombstoned")
            if erasures[digest] == 1:
                exactly_once += 1
            else:
                violations.append(f"request {item.index}: erased {erasures[digest]} times in the receipt log")
        expected = ("erased", item.expected_rows) if item.expected_rows else ("not_found", 0)
        if stored is None or (stored.status, stored.rows_removed) != expected:
            wrong += 1
            got = (stored.status, stored.rows_removed) if stored else None
            violations.append(f"request {item.index}: receipt says {got}, expected {expected}")

    right, total = _check_ingests(catalog, latest, hasher, tombstones, ingested, violations)
    exact = rederive_shards(catalog, latest, range(latest.sharding.shards))
    inexact = [s for s, r in exact.items() if not r.result.exact]
    if inexact:
        violations.append(f"shard(s) {inexact} differ from training from scratch on their recorded slices")

    scans = [
        scan_store(store, s.subject, hasher.digest(s.subject)) for s in acknowledged if s.expected_rows and s.request_id
    ]
    dirty = [r for r in scans if not r.clean]
    for report in dirty[:5]:
        violations.append(f"a trace of an erased subject remains: {report.findings[:2]}")

    loadable = _loadable_purged(catalog, storage)
    if loadable:
        violations.append(f"{loadable} model version(s) built before an erasure can still be loaded")
    if writers.get("admitted", 0):
        violations.append(f"{writers['admitted']} concurrent writer(s) were admitted next to the service")
    return ChaosSummary(
        requests=len(submitted),
        acknowledged=len(acknowledged),
        not_found_expected=sum(1 for s in acknowledged if not s.expected_rows),
        erased_exactly_once=exactly_once,
        lost=lost,
        stuck=stuck,
        resurrected=resurrected,
        wrong_receipts=wrong,
        loadable_purged=loadable,
        scan_clean=not dirty,
        exact_shards=len(exact) - len(inexact),
        shards=len(exact),
        writers_refused=writers.get("refused", 0),
        writers_admitted=writers.get("admitted", 0),
        ingests=len(ingested),
        ingests_acknowledged=sum(1 for i in ingested if i.acknowledged),
        ingested_rows_right=right,
        ingested_rows=total,
        faults_injected=dict(sorted(faults.items())),
        seconds=round(seconds, 1),
        violations=violations,
    )


def _check_ingests(
    catalog: Catalog,
    latest: EnsembleManifest,
    hasher: SubjectHasher,
    tombstones: set[str],
    ingested: Sequence[Ingested],
    violations: list[str],
) -> tuple[int, int]:
    """Every ingested row is stored once (its person not erased) or never (erased); nothing twice; rows add up.

    An acknowledged ingest must have its receipt; one never acknowledged may or may not have
    committed, but never twice. Returns (rows right, rows checked).
    """
    counts: Counter[str] = Counter()
    for shard, version in enumerate(latest.shard_versions):
        for entry in catalog.shard_manifest(shard, version).slices:
            table = pq.read_table(io.BytesIO(catalog.store.get(entry.key)), columns=[RECORD_ID])
            counts.update(table.column(RECORD_ID).to_pylist())
    if sum(counts.values()) != latest.rows:
        violations.append(f"the published version says {latest.rows} rows and its slices hold {sum(counts.values())}")
    right = total = 0
    for batch in ingested:
        if batch.acknowledged and catalog.read_ingest_receipt(batch.request_id) is None:
            violations.append(f"ingest {batch.request_id} was acknowledged and has no receipt in the store")
        for record, subject in batch.rows.items():
            total += 1
            erased = hasher.digest(subject) in tombstones
            allowed = {0} if erased else ({1} if batch.acknowledged else {0, 1})
            if counts[record] in allowed:
                right += 1
            else:
                who = "an erased person's" if erased else "a row"
                violations.append(f"ingest {batch.request_id}: {who} row is stored {counts[record]} time(s)")
    return right, total


def _loadable_purged(catalog: Catalog, storage: StorageConfig) -> int:
    """Model versions built from an ensemble older than the newest erasure that still load (or keep an alias)."""
    from expunge.orchestrator.registry.checks import AuditView

    latest = catalog.latest()
    if latest is None or latest.registry is None:
        return 0
    newest_erasure = max((v for v in catalog.versions() if catalog.read(v).kind == "erasure"), default=None)
    if newest_erasure is None:
        return 0
    check = AuditView(latest.registry, storage).check_erasure(newest_erasure)
    return sum(1 for v in check.versions if v.loadable or v.aliases) + (1 if check.served_version is None else 0)
