"""Ingest through the erasure service in-process (local shards): writer order, serving, retries, bad rows, stop."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from threading import Thread
from typing import Any

import pyarrow as pa
import pytest

from expunge.orchestrator.api.metrics import HttpMetrics, render
from expunge.orchestrator.config import TrackingConfig
from expunge.orchestrator.errors import (
    DataValidationError,
    IdempotencyConflictError,
    PersonalDataInTextError,
    ServiceUnavailableError,
    UnknownSubjectError,
)
from expunge.orchestrator.evidence.rederive import rederive_shards
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.service.ingestion import columns_table, ingest_due
from expunge.shards.rows import ITEM_ID, RATING, RECORD_ID, SUBJECT_ID
from tests.service.test_service import SUBJECTS, _service
from tests.service.test_service_on_ray import served as ray_served  # noqa: F401 (a fixture, by this name)


def _rows(subject: str, items: range, prefix: str) -> dict[str, list[object]]:
    return {
        RECORD_ID: [f"{prefix}-{i}" for i in items],
        SUBJECT_ID: [subject] * len(items),
        ITEM_ID: list(items),
        RATING: [4.0] * len(items),
    }


def _batch(*parts: dict[str, list[object]]) -> pa.Table:
    return columns_table({name: [v for part in parts for v in part[name]] for name in parts[0]})


def _files(store: Path) -> list[str]:
    """Every object of the store but the lease's, which the service renews while it runs."""
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file() and p.parent.name != "lease")


def _until(check: Callable[[], bool], what: str) -> None:
    """Wait for ``check`` (a step of the service's worker); a hang fails here after two minutes."""
    for _ in range(2400):
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


@pytest.mark.parametrize(
    ("ingest_since", "erasure_since", "overdue", "due"),
    [
        (None, None, False, False),  # nothing waits
        (5.0, None, False, True),  # nothing queued before it
        (5.0, 4.0, False, False),  # an erasure accepted first commits first
        (5.0, 6.0, False, True),  # the erasure came later: it waits for the ingest
        (5.0, None, True, False),  # a registration past register_within_s goes first
    ],
)
def test_an_ingest_runs_after_what_came_before_it(ingest_since, erasure_since, overdue, due):
    assert ingest_due(ingest_since, erasure_since, overdue) is due


def test_an_ingest_joins_a_waiting_erasure_then_is_served_exact_and_idempotent(tmp_path, hasher):
    # A long window keeps the erasure queued when the ingest arrives: both go in one commit, each
    # shard retrained once, and the batch's rows of the person being erased are refused.
    service = _service(tmp_path, hasher, window_ms=1500)
    try:
        erased, known = SUBJECTS[0], SUBJECTS[1]
        before = service.model_version().ensemble_version
        request_id = service.submit([erased])
        batch = _batch(
            _rows(erased, range(0, 3), "late"), _rows(known, range(0, 2), "more"), _rows("newcomer", range(3), "new")
        )
        with pytest.raises(UnknownSubjectError):
            service.recommend("newcomer", k=2)
        shards = service.coordinator.pool.shards  # type: ignore[attr-defined]
        calls_before = {s: len(shard.calls) for s, shard in shards.items()}
        receipt = service.ingest(batch, request_id="daily-0001")
        erasure = service.status(request_id)
        assert erasure.stage in ("committed", "registered")
        assert receipt.status == "ingested"
        assert (receipt.rows_refused_erased, receipt.subjects_refused_erased) == (3, 1)
        assert (receipt.rows_added, receipt.new_subjects) == (5, 1)
        assert receipt.model_version_before == before  # one commit for both
        assert erasure.receipt is not None
        assert erasure.receipt.model_version_after == receipt.model_version_after == before + 1
        assert service.model_version().ensemble_version == before + 1
        new_calls = {s: shard.calls[calls_before[s] :] for s, shard in shards.items()}
        assert all(calls.count("ingest") <= 1 and "erase" not in calls for calls in new_calls.values())
        assert len(service.recommend("newcomer", k=2)) == 2  # served at once
        manifest = service.coordinator.require_manifest()
        found = rederive_shards(service.coordinator.catalog, manifest, range(manifest.sharding.shards))
        assert all(r.result.exact for r in found.values())
        # The same request again: the first receipt, nothing new; other rows under its id: refused.
        assert service.ingest(batch, request_id="daily-0001") == receipt
        with pytest.raises(IdempotencyConflictError, match="other rows"):
            service.ingest(_batch(_rows("someone", range(2), "other")), request_id="daily-0001")
        unnamed = service.ingest(batch)
        assert (unnamed.status, unnamed.rows_already_stored, unnamed.rows_added) == ("nothing_new", 5, 0)
        stats = service.stats()  # joined: 5 rows; the replay and the unnamed one added nothing; the conflict failed
        assert (stats.ingested, stats.ingests_nothing_new, stats.ingests_failed, stats.rows_ingested) == (1, 2, 1, 5)
        assert service.model_version().ensemble_version == before + 1
    finally:
        service.close()


def test_bad_rows_write_nothing_and_a_good_ingest_goes_to_registration(tmp_path, hasher):
    service = _service(tmp_path, hasher, window_ms=0)
    try:
        store = tmp_path / "store"
        before = _files(store)
        bad = pa.table(
            {
                RECORD_ID: ["a", "a", "b"],
                SUBJECT_ID: ["u1", "  ", "u2"],
                ITEM_ID: pa.array([1, 2, 999], pa.int64()),
                RATING: pa.array([1.0, float("nan"), 9.0]),
                "email": ["x@example.com", "y", "z"],
            }
        )
        with pytest.raises(DataValidationError) as raised:
            service.ingest(bad)
        problems = "\n".join(raised.value.problems)
        for expected in ("unknown column(s) ['email']", "duplicate record_id", "empty subject_id", "item_id", "NaN",
                         "rating range"):  # fmt: skip
            assert expected in problems, problems
        with pytest.raises(PersonalDataInTextError):
            service.ingest(_batch(_rows("user-77", range(2), "r")), request_id="batch-user-77")
        assert _files(store) == before
        assert service.stats().registrations == 0
        # A committed ingest is registered by the worker's next step (MLflow is off here: the step runs all the same).
        receipt = service.ingest(_batch(_rows("user-77", range(2), "r")), request_id="batch-0077")
        assert receipt.status == "ingested"
        _until(lambda: service.stats().registrations == 1, "the registration step after the ingest")
        # Counted (they were not: stats and /metrics showed erasures only); refusals before the queue are not answers.
        stats = service.stats()
        assert (stats.ingested, stats.ingests_nothing_new, stats.ingests_failed, stats.rows_ingested) == (1, 0, 0, 2)
        metrics = render(stats, {}, HttpMetrics())
        assert 'expunge_ingests_total{outcome="ingested"} 1' in metrics
        assert "expunge_ingested_rows_total 2" in metrics
    finally:
        service.close()


def test_an_ingest_waiting_when_the_service_stops_is_refused_and_writes_nothing(tmp_path, hasher):
    service = _service(tmp_path, hasher, window_ms=60_000)  # the erasure before it does not commit in this test
    outcome: list[BaseException] = []

    def ingest() -> None:
        try:
            service.ingest(_batch(_rows("newcomer", range(2), "n")))
        except BaseException as exc:
            outcome.append(exc)

    caller = Thread(target=ingest)
    try:
        service.submit([SUBJECTS[2]])
        caller.start()
        _until(lambda: service.ingestion.waiting() == 1, "the ingest waiting behind the erasure")
    finally:
        service.close()
    caller.join(timeout=120)
    assert len(outcome) == 1, outcome
    assert isinstance(outcome[0], ServiceUnavailableError)
    assert service.coordinator.catalog.latest().version == 1  # nothing was published


@pytest.mark.slow  # MLflow on SQLite: about 20 s
def test_mlflow_gets_the_ingested_version_after_the_answer(tmp_path, hasher):
    lineage = Lineage(
        TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="svc", model_name="svc-model"),
        str(tmp_path / "store"),
    )
    service = _service(tmp_path, hasher, lineage=lineage, window_ms=0)
    try:
        receipt = service.ingest(_batch(_rows("newcomer", range(3), "n")))
        assert receipt.registered_at is None  # MLflow is the next step, never the caller's wait
        _until(lambda: lineage.recorded_ensemble_version() == receipt.model_version_after, "the MLflow version")
        assert service.model_version().registry_version is not None
    finally:
        service.close()


@pytest.mark.slow  # a Ray cluster and a detached service with its shard actors: tens of seconds
@pytest.mark.usefixtures("ray_cluster")
def test_the_ray_sdk_ingests_through_the_running_service(ray_served):  # noqa: F811 (the fixture)
    _, _, start = ray_served
    client = start()
    version = client.model_version().ensemble_version
    columns = _rows("ray-newcomer", range(3), "ray")
    receipt = client.ingest(columns)
    assert (receipt.status, receipt.rows_added) == ("ingested", 3)
    assert client.model_version().ensemble_version == receipt.model_version_after == version + 1
    assert len(client.recommend("ray-newcomer", k=2)) == 2
    assert client.ingest(_batch(columns), request_id=receipt.request_id) == receipt  # a retry: the first receipt
    with pytest.raises(DataValidationError):  # typed across the actor call
        client.ingest({**columns, RATING: [9.0, 9.0, 9.0]})


def test_an_ingest_joining_an_erasure_gets_its_own_mlflow_run_with_the_erasures_version(tmp_path, hasher):
    # It had none: MLflow recorded the erasure's run and version only, and the batch's lineage was lost.
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="svc", model_name="svc-model")
    lineage = Lineage(tracking, str(tmp_path / "store"))
    service = _service(tmp_path, hasher, lineage=lineage, window_ms=1500)
    try:
        request_id = service.submit([SUBJECTS[0]])
        receipt = service.ingest(_batch(_rows("newcomer", range(3), "n")), request_id="daily-0002")
        erasure = service.status(request_id).receipt
        assert erasure is not None
        assert receipt.model_version_after == erasure.model_version_after  # one commit for both

        def ingest_runs() -> list[Any]:
            found = lineage.client.search_runs(
                [lineage.registry.experiment_id], filter_string="tags.mlflow.runName = 'ingest-daily-0002'"
            )
            return [r for r in found if "registry_version_after" in r.data.params]

        _until(lambda: len(ingest_runs()) == 1, "the ingest's run, finished after the erasure's version")
        runs = ingest_runs()
        version = service.model_version().registry_version
        assert runs[0].data.params["registry_version_after"] == version
        assert runs[0].data.tags["expunge.registry_version"] == version
    finally:
        service.close()
