"""Random interleavings of train, ingest and forget on in-process shards: every version stays exact.

After every operation each shard, re-derived from scratch on its recorded slice sequence, equals
the live one bit for bit (``rederive_shards``); the store holds exactly the rows the operations
so far leave (the ensemble's row count included); an erased subject's rows are nowhere, and its
later rows are refused and counted.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from expunge.orchestrator.config import IngestConfig, ItemStatsConfig, JobConfig, MFConfig, SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.evidence.rederive import rederive_shards
from expunge.orchestrator.evidence.scan import scan_store
from expunge.orchestrator.training.placement import cell_of_key
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import ITEM_ID, RATING, RECORD_ID, SUBJECT_DIGEST, SUBJECT_ID
from expunge.shards.store import ObjectStore
from tests.conftest import TEST_KEY
from tests.engine import job

ITEMS = 12
POOL = synthetic_ratings(SyntheticRatingsConfig(users=40, items=ITEMS, ratings_per_user=3, seed=21))
SUBJECTS = sorted(set(POOL.column(SUBJECT_ID).to_pylist()), key=lambda s: int(s.split("-")[1]))
FIRST_TRAINING = SUBJECTS[:8]
#: Small bounds, so that a few ingests into a shard compact it (R=2: a third tail slice merges).
LIMITS = IngestConfig(tail_epochs=1, max_tail_slices=2, max_subject_slices=3)
MODELS = {
    # The catalogue is fixed, so a retraining on fewer rows keeps accepting every item id.
    "mf": MFConfig(embedding_dim=2, num_items=ITEMS),
    "item_stats": ItemStatsConfig(factors=2, num_items=ITEMS),
}
HASHER = SubjectHasher(TEST_KEY)


@dataclass
class Expected:
    """What the store must hold after the operations so far: record id -> row, and who was erased."""

    rows: dict[str, dict[str, object]] = field(default_factory=dict)
    erased: set[str] = field(default_factory=set)
    #: Rows the store held of subjects erased since (offered again, they are refused).
    erased_rows: list[dict[str, object]] = field(default_factory=list)
    unused: list[str] = field(default_factory=lambda: list(SUBJECTS))
    fresh: int = 0

    def subjects(self) -> list[str]:
        return sorted({str(r[SUBJECT_ID]) for r in self.rows.values()})

    def table(self) -> pa.Table:
        ordered = [self.rows[r] for r in sorted(self.rows)]
        return pa.Table.from_pylist(ordered, schema=POOL.schema)

    def take_new(self, count: int) -> list[str]:
        taken, self.unused = self.unused[:count], self.unused[count:]
        return taken

    def fresh_rows(self, subject: str, ratings: list[tuple[int, float]]) -> list[dict[str, object]]:
        """New rows of ``subject`` (item, rating) with record ids never used before."""
        made = []
        for item, rating in ratings:
            self.fresh += 1
            made.append({RECORD_ID: f"x{self.fresh:04d}", SUBJECT_ID: subject, ITEM_ID: item, RATING: float(rating)})
        return made


def _pool_rows(subjects: list[str]) -> list[dict[str, object]]:
    wanted = set(subjects)
    return [r for r in POOL.to_pylist() if r[SUBJECT_ID] in wanted]


@contextmanager
def _store() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="expunge-interleave-") as scratch:
        yield Path(scratch) / "store"


def _stored(coordinator: Coordinator) -> dict[str, tuple[object, ...]]:
    """Record id -> (subject digest, item, rating) of every row the published version's slices hold."""
    manifest = coordinator.require_manifest()
    held: dict[str, tuple[object, ...]] = {}
    for shard, version in enumerate(manifest.shard_versions):
        for entry in coordinator.catalog.shard_manifest(shard, version).slices:
            table = pq.read_table(io.BytesIO(coordinator.store.get(entry.key)))
            for row in table.to_pylist():
                assert row[RECORD_ID] not in held, f"record {row[RECORD_ID]} is stored twice (slice {entry.key})"
                held[row[RECORD_ID]] = (row[SUBJECT_DIGEST], row[ITEM_ID], row[RATING])
    return held


def _check(coordinator: Coordinator, expected: Expected, after: str) -> None:
    manifest = coordinator.require_manifest()
    found = rederive_shards(coordinator.catalog, manifest, range(manifest.sharding.shards))
    inexact = {s: r.result.first_difference for s, r in found.items() if not r.result.exact}
    assert not inexact, f"after {after}: shards not exact: {inexact}"
    stored = _stored(coordinator)
    want = {
        r: (HASHER.digest(str(row[SUBJECT_ID])), row[ITEM_ID], float(np.float32(row[RATING])))  # stored as float32
        for r, row in expected.rows.items()
    }
    assert stored == want, f"after {after}: the store's rows differ from the expected rows"
    assert manifest.rows == len(stored), (
        f"after {after}: the ensemble counts {manifest.rows} rows, slices {len(stored)}"
    )
    erased = {HASHER.digest(s) for s in expected.erased}
    assert not erased & {held[0] for held in stored.values()}, f"after {after}: an erased subject's rows are stored"
    placement = coordinator.placement_index()
    assert not erased & set(placement.entries), f"after {after}: an erased subject is still placed"
    per_subject: dict[str, int] = {}
    for digest, _, _ in stored.values():
        per_subject[digest] = per_subject.get(digest, 0) + 1
    assert placement.rows() == per_subject, f"after {after}: the placement's row counts differ from the slices'"


def _train(coordinator: Coordinator, expected: Expected, config: JobConfig, data: st.DataObject) -> str:
    newcomers = expected.take_new(data.draw(st.integers(0, 2), label="new subjects in the training"))
    for row in _pool_rows(newcomers):
        expected.rows[str(row[RECORD_ID])] = row
    coordinator.train(expected.table(), config)
    return f"train on {len(expected.rows)} rows"


def _ingest(coordinator: Coordinator, expected: Expected, data: st.DataObject, whole_subject: bool) -> str:
    known = expected.subjects()
    newcomers = expected.take_new(data.draw(st.integers(0, 2), label="new subjects"))
    returning = data.draw(st.lists(st.sampled_from(known), unique=True, max_size=3), label="known subjects")
    refused_subjects = (
        data.draw(st.lists(st.sampled_from(sorted(expected.erased)), unique=True, max_size=2), label="erased subjects")
        if expected.erased
        else []
    )
    stored_again = data.draw(st.lists(st.sampled_from(sorted(expected.rows)), unique=True, max_size=3), label="dups")
    # Off-grid ratings too: item_stats rounds them to its exact grid, MF takes them as float32.
    stars = st.sampled_from([0.5, 1.0, 2.5, 3.0, 3.7, 4.25, 5.0])
    ratings = st.lists(st.tuples(st.integers(0, ITEMS - 1), stars), min_size=1, max_size=3)
    new_rows = _pool_rows(newcomers)
    for subject in returning:
        new_rows += expected.fresh_rows(subject, data.draw(ratings, label=f"ratings of {subject}"))
    refused_rows = [r for s in refused_subjects for r in expected.fresh_rows(s, data.draw(ratings, label="refused"))]
    if expected.erased_rows and data.draw(st.booleans(), label="offer an erased row again"):
        # The very row the store held before the erasure: not stored any more, and still refused.
        old = data.draw(st.sampled_from(expected.erased_rows), label="erased row")
        refused_rows.append(old)
        refused_subjects = sorted({*refused_subjects, str(old[SUBJECT_ID])})
    batch = new_rows + refused_rows + [expected.rows[r] for r in stored_again]
    if not batch:
        return "nothing to ingest"
    table = pa.Table.from_pylist(batch, schema=POOL.schema)
    before = coordinator.require_manifest()
    homes = {d: {c.shard for c in cells} for d, cells in coordinator.placement_index().entries.items()}
    receipt = coordinator.ingest(table, settings=LIMITS)
    assert receipt.rows_added == len(new_rows)
    assert receipt.rows_refused_erased == len(refused_rows)
    assert receipt.subjects_refused_erased == len(refused_subjects)
    assert receipt.rows_already_stored == len(stored_again)
    assert receipt.status == ("ingested" if new_rows else "nothing_new")
    after = coordinator.require_manifest()
    assert after.version == before.version + (1 if new_rows else 0)
    for shard in receipt.untouched_shards:
        assert after.shard_versions[shard] == before.shard_versions[shard], f"untouched shard {shard} changed"
    placed = coordinator.placement_index().entries
    for subject in returning:
        digest = HASHER.digest(subject)
        assert {c.shard for c in placed[digest]} == homes[digest], f"{subject} left its shard"
    for subject in newcomers:
        digest = HASHER.digest(subject)
        assert {c.shard for c in placed[digest]} == {cell_of_key(digest, 2, 2).shard}, f"{subject} off its hash"
    if whole_subject:
        assert all(len(cells) == 1 for cells in placed.values()), "a subject spans two slices"
    for row in new_rows:
        expected.rows[str(row[RECORD_ID])] = row
    if any(s.slices_merged for s in receipt.shards):
        event("an ingest compacted a shard")
    if refused_rows:
        event("an ingest refused an erased subject's rows")
    if data.draw(st.booleans(), label="give the batch again"):
        again = coordinator.ingest(table, settings=LIMITS)
        assert again.status == "nothing_new"
        assert again.rows_added == 0
        assert again.rows_already_stored == len(new_rows) + len(stored_again)
        assert again.rows_refused_erased == len(refused_rows)
        assert coordinator.require_manifest().version == after.version
    return (
        f"ingest of {len(new_rows)} new row(s) of {newcomers} (new) and {returning} (known), "
        f"{len(refused_rows)} refused row(s) of {refused_subjects}, {len(stored_again)} stored row(s) again"
    )


def _forget(coordinator: Coordinator, expected: Expected, data: st.DataObject) -> str:
    known = expected.subjects()
    if len(known) < 2:
        return "nothing to forget"
    chosen = data.draw(st.lists(st.sampled_from(known), unique=True, min_size=1, max_size=2), label="forget")
    coordinator.forget(chosen)
    expected.erased |= set(chosen)
    expected.erased_rows += [row for row in expected.rows.values() if row[SUBJECT_ID] in expected.erased]
    expected.rows = {r: row for r, row in expected.rows.items() if row[SUBJECT_ID] not in expected.erased}
    return f"forget {chosen}"


def _interleave(model: str, data: st.DataObject, operations: int) -> None:
    placement = data.draw(st.sampled_from(["balanced", "hash"]), label="placement")
    job_config = job(MODELS[model], shards=2, slices=2, placement=placement)
    expected = Expected()
    expected.take_new(len(FIRST_TRAINING))
    for row in _pool_rows(FIRST_TRAINING):
        expected.rows[str(row[RECORD_ID])] = row
    with _store() as root:
        coordinator = Coordinator(str(root), HASHER, pool_factory=local_pool)
        coordinator.train(expected.table(), job_config)
        _check(coordinator, expected, "the first training")
        done = ["train"]
        for _ in range(operations):
            # Ingests are the likeliest, so that a shard gathers tails and compacts before a training resets it.
            op = data.draw(st.sampled_from(["ingest", "ingest", "ingest", "forget", "train"]), label="operation")
            if op == "ingest":
                what = _ingest(coordinator, expected, data, whole_subject=model == "item_stats")
            elif op == "forget":
                what = _forget(coordinator, expected, data)
            else:
                what = _train(coordinator, expected, job_config, data)
            done.append(what)
            event(f"operation: {what.split(' ')[0]}")
            _check(coordinator, expected, " -> ".join(done))
        for subject in sorted(expected.erased):
            report = scan_store(ObjectStore(str(root)), subject, HASHER.digest(subject))
            assert report.clean, f"after {' -> '.join(done)}: traces of {subject}: {report.findings}"


@pytest.mark.parametrize("model", sorted(MODELS))
@settings(max_examples=10, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_every_interleaving_stays_exact(model, data):
    _interleave(model, data, operations=data.draw(st.integers(3, 6), label="operations"))


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(MODELS))
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_every_long_interleaving_stays_exact(model, data):
    _interleave(model, data, operations=data.draw(st.integers(6, 14), label="operations"))


@pytest.mark.parametrize("model", sorted(MODELS))
def test_ingests_into_one_shard_compact_it_and_every_version_stays_exact(model):
    """A fixed run that always compacts: four ingests into one shard (R=2, at most 2 tails), then erasures."""
    expected = Expected()
    first = expected.take_new(len(FIRST_TRAINING))
    for row in _pool_rows(first):
        expected.rows[str(row[RECORD_ID])] = row
    regular = first[0]
    shard = cell_of_key(HASHER.digest(regular), 2, 2).shard
    same_shard = [s for s in expected.unused if cell_of_key(HASHER.digest(s), 2, 2).shard == shard][:4]
    with _store() as root:
        coordinator = Coordinator(str(root), HASHER, pool_factory=local_pool)
        coordinator.train(expected.table(), job(MODELS[model], shards=2, slices=2, placement="hash"))
        _check(coordinator, expected, "the first training")
        slices_after = []
        for step, newcomer in enumerate(same_shard):
            expected.unused.remove(newcomer)
            rows = _pool_rows([newcomer]) + expected.fresh_rows(regular, [(step, 1.3 + step)])
            receipt = coordinator.ingest(pa.Table.from_pylist(rows, schema=POOL.schema), settings=LIMITS)
            (part,) = [p for p in receipt.shards if p.shard == shard]
            slices_after.append((part.slices_after, bool(part.slices_merged)))
            for row in rows:
                expected.rows[str(row[RECORD_ID])] = row
            _check(coordinator, expected, f"ingest {step + 1}")
        # Tails at 2 and 3, then a third tail is one too many: slices 2.. merge into slice 2.
        assert slices_after == [(3, False), (4, False), (3, True), (4, False)]
        home = coordinator.placement_index().entries[HASHER.digest(regular)]
        assert len(home) == (1 if model == "item_stats" else 3)  # its base slice, the merged tail, the last tail
        erased = [regular, same_shard[1]]
        coordinator.forget(erased)
        expected.erased |= set(erased)
        expected.rows = {r: row for r, row in expected.rows.items() if row[SUBJECT_ID] not in expected.erased}
        _check(coordinator, expected, "the erasure")
        again = expected.fresh_rows(regular, [(0, 5.0)]) + _pool_rows([same_shard[1]])
        receipt = coordinator.ingest(pa.Table.from_pylist(again, schema=POOL.schema), settings=LIMITS)
        assert (receipt.status, receipt.rows_refused_erased, receipt.subjects_refused_erased) == (
            "nothing_new",
            len(again),
            2,
        )
        for subject in erased:
            report = scan_store(ObjectStore(str(root)), subject, HASHER.digest(subject))
            assert report.clean, f"traces of {subject}: {report.findings}"
