"""Issue 7: a miss looks like a miss, an erased person stays erased, the store knows its registry."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest

from expunge.orchestrator.catalog import Catalog, RegistryBinding
from expunge.orchestrator.config import JobConfig, SyntheticRatingsConfig, TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.errors import (
    ConfigError,
    ErasedSubjectsInDataError,
    PersonalDataInTextError,
    StorageCorruptError,
)
from expunge.orchestrator.evidence.scan import scan_store
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.registry.binding import bind_tracking
from expunge.orchestrator.request_ids import check_request_id
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from expunge.shards.store import ObjectStore
from tests.engine import job

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=30, items=20, ratings_per_user=5, seed=3))
SUBJECTS = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))


def _trained(tmp_path, hasher, config: JobConfig | None = None) -> Coordinator:
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    coordinator.train(ROWS, config or job(shards=2, slices=2))
    return coordinator


# ----- a miss looks like a miss -------------------------------------------------------------------
def test_a_request_that_finds_nobody_leaves_a_stored_receipt(tmp_path, hasher):
    coordinator = _trained(tmp_path, hasher)
    receipt = coordinator.forget(["nobody-by-this-name"], request_id="GDPR-0001")
    assert receipt.status == "not_found"
    assert receipt.model_version_after == receipt.model_version_before == 1
    stored = coordinator.catalog.read_request_receipt("GDPR-0001")
    assert stored is not None
    assert ErasureReceipt.model_validate_json(stored).not_found_digests == (hasher.digest("nobody-by-this-name"),)
    assert "nobody-by-this-name" not in stored


def test_an_erasure_leaves_its_receipt_under_the_request_id(tmp_path, hasher):
    coordinator = _trained(tmp_path, hasher)
    receipt = coordinator.forget([SUBJECTS[2], "ghost"], request_id="GDPR-0002")
    stored = json.loads(coordinator.catalog.read_request_receipt("GDPR-0002") or "{}")
    assert stored["status"] == "erased"
    assert stored["not_found_digests"] == [hasher.digest("ghost")]
    assert stored["rows_removed"] == receipt.rows_removed > 0


@pytest.mark.parametrize("bad", ["", "../escape", "a b", "team's", "-leading", "x" * 129, "a/b"])
def test_request_ids_that_cannot_name_a_receipt_are_refused(bad):
    with pytest.raises(ConfigError, match="request id"):
        check_request_id(bad)


def test_a_bad_request_id_changes_nothing(tmp_path, hasher):
    coordinator = _trained(tmp_path, hasher)
    before = sorted(coordinator.store.list_keys(""))
    with pytest.raises(ConfigError):
        coordinator.forget([SUBJECTS[0]], request_id="../../etc/passwd")
    assert sorted(coordinator.store.list_keys("")) == before


# ----- an erased person stays erased --------------------------------------------------------------
def test_training_again_on_the_uncleaned_source_is_refused(tmp_path, hasher):
    coordinator = _trained(tmp_path, hasher)
    subject = SUBJECTS[5]
    coordinator.forget([subject])
    versions = coordinator.catalog.versions()
    with pytest.raises(ErasedSubjectsInDataError) as error:
        coordinator.train(ROWS, job(shards=2, slices=2))
    assert error.value.subjects == 1
    assert error.value.rows == ROWS.column(SUBJECT_ID).to_pylist().count(subject)
    assert subject not in str(error.value)
    assert "erased_subjects: drop" in str(error.value)
    assert coordinator.catalog.versions() == versions  # nothing written
    assert scan_store(coordinator.store, subject, hasher.digest(subject)).clean


def test_drop_leaves_erased_people_out_and_records_it(tmp_path, hasher):
    coordinator = _trained(tmp_path, hasher)
    subject = SUBJECTS[5]
    coordinator.forget([subject])
    config = job(shards=2, slices=2)
    config = config.model_copy(update={"data": config.data.model_copy(update={"erased_subjects": "drop"})})
    result = coordinator.train(ROWS, config)
    rows_of_subject = ROWS.column(SUBJECT_ID).to_pylist().count(subject)
    assert result.manifest.erased_rows_dropped == rows_of_subject
    assert result.manifest.rows == len(ROWS) - rows_of_subject
    assert hasher.digest(subject) not in coordinator.placement_index().entries
    assert scan_store(coordinator.store, subject, hasher.digest(subject)).clean


def test_readmission_is_explicit_and_recorded(tmp_path, hasher):
    coordinator = _trained(tmp_path, hasher)
    subject = SUBJECTS[5]
    coordinator.forget([subject])
    with pytest.raises(ConfigError, match="reason"):
        coordinator.readmit([subject], reason="  ")
    # The reason is kept in the tombstone log: text that names the person is refused, nothing stored.
    tombstones = coordinator.store.list_keys("tombstones")
    for reason in (f"consent of {subject}", "consent by mail from ann@example.org"):
        with pytest.raises(PersonalDataInTextError):
            coordinator.readmit([subject], reason=reason)
    assert coordinator.store.list_keys("tombstones") == tombstones
    assert coordinator.readmit([subject], reason="consent ticket 4711", request_id="consent-4711") == 1
    assert hasher.digest(subject) not in coordinator.catalog.tombstones()
    coordinator.train(ROWS, job(shards=2, slices=2))  # admitted again
    assert hasher.digest(subject) in coordinator.placement_index().entries
    log = [json.loads(coordinator.store.get(k)) for k in coordinator.store.list_keys("tombstones")]
    assert [(e["action"], e["request_id"], e["reason"]) for e in log][-1] == (
        "readmitted",
        "consent-4711",
        "consent ticket 4711",
    )


def test_tombstone_appends_never_share_a_sequence_number(tmp_path):
    catalog = Catalog(ObjectStore(str(tmp_path / "store")))
    first = catalog.append_tombstones("erased", ["a" * 64], "r1")
    second = catalog.append_tombstones("erased", ["b" * 64], "r2")
    third = catalog.append_tombstones("readmitted", ["a" * 64], "r3", "consent")
    assert [first.sequence, second.sequence, third.sequence] == [1, 2, 3]
    assert catalog.tombstones() == {"b" * 64}


# ----- the store knows its registry ---------------------------------------------------------------
RECORDED = RegistryBinding(tracking_uri="sqlite:////srv/mlflow.db", experiment="demo", model_name="demo", alias="live")


def test_nothing_given_uses_the_recorded_registry():
    bound = bind_tracking(RECORDED, None, None, "s3://b/x")
    assert (bound.uri, bound.experiment, bound.model_name, bound.alias) == (
        "sqlite:////srv/mlflow.db",
        "demo",
        "demo",
        "live",
    )


def test_another_model_name_is_refused():
    with pytest.raises(ConfigError, match="model_name 'demo'"):
        bind_tracking(RECORDED, TrackingConfig(model_name="other", experiment="demo"), None, "s3://b/x")


def test_tracking_switched_off_for_a_store_with_a_registry_is_refused():
    with pytest.raises(ConfigError, match="enabled"):
        bind_tracking(RECORDED, TrackingConfig(enabled=False, model_name="demo", experiment="demo"), None, "x")


def test_another_tracking_uri_is_refused():
    # The recorded registry would keep serving the pre-erasure version while another got the new one.
    with pytest.raises(ConfigError, match="publishes to the MLflow registry at"):
        bind_tracking(RECORDED, None, "sqlite:////tmp/other.db", "x")
    assert bind_tracking(RECORDED, None, "sqlite:////srv/mlflow.db/", "x").uri == "sqlite:////srv/mlflow.db/"


def test_no_recorded_registry_keeps_the_given_settings():
    assert bind_tracking(None, TrackingConfig(model_name="m"), "sqlite:///t.db", "x").model_name == "m"
    assert bind_tracking(None, None, None, "x") == TrackingConfig()


# ----- corrupt state is a typed error naming the object -------------------------------------------
def test_a_truncated_manifest_is_a_typed_error_naming_the_object(tmp_path, hasher):
    _trained(tmp_path, hasher)
    key = "ensemble/00000001.json"
    path = tmp_path / "store" / key
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(StorageCorruptError, match=r"ensemble/00000001\.json"):
        Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)


def test_scan_finds_a_person_typed_another_way(tmp_path, hasher):
    import unicodedata

    import pyarrow as pa

    rows = ROWS.set_column(
        ROWS.schema.get_field_index(SUBJECT_ID),
        SUBJECT_ID,
        pa.array([("zoë" if s == SUBJECTS[1] else s) for s in ROWS.column(SUBJECT_ID).to_pylist()]),
    )
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    coordinator.train(rows, job(shards=2, slices=2))
    typed = " " + unicodedata.normalize("NFD", "zoë") + " "  # decomposed, with spaces around
    # A digest that matches nothing, so only the raw-id check of the stored rows can find them.
    report = scan_store(coordinator.store, typed, "0" * 64)
    assert "rows" in {f.kind for f in report.findings}


def test_a_second_request_for_an_erased_person_says_they_were_erased_earlier(tmp_path, hasher):
    coordinator = _trained(tmp_path, hasher)
    coordinator.forget([SUBJECTS[3]])
    again = coordinator.forget([SUBJECTS[3], "never-seen"])
    assert again.status == "not_found"
    assert again.already_erased_digests == (hasher.digest(SUBJECTS[3]),)
    assert set(again.not_found_digests) == {hasher.digest(SUBJECTS[3]), hasher.digest("never-seen")}


def test_the_demo_never_wipes_a_workdir_it_did_not_make(tmp_path):
    from expunge.pipelines.demo import DemoOptions
    from expunge.pipelines.demo import run as run_demo

    (tmp_path / "mlflow.db").write_text("a real registry")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "keep.txt").write_text("a real store")
    with pytest.raises(ConfigError, match="did not make"):
        run_demo(DemoOptions(workdir=tmp_path), quiet=True)
    assert (tmp_path / "mlflow.db").read_text() == "a real registry"
    assert (tmp_path / "store" / "keep.txt").exists()


def test_held_out_rows_of_erased_people_are_refused_or_dropped_too(tmp_path, hasher):
    from expunge.shards.rows import SUBJECT_ID as SID

    coordinator = _trained(tmp_path, hasher)
    coordinator.forget([SUBJECTS[5]])
    held_out = ROWS.filter(pc.equal(ROWS.column(SID), SUBJECTS[5]))  # a person whose rows are all held out
    with pytest.raises(ErasedSubjectsInDataError):
        coordinator.apply_tombstones(held_out, "refuse")
    kept, dropped = coordinator.apply_tombstones(held_out, "drop")
    assert (len(kept), dropped) == (0, len(held_out))


def test_a_long_lived_coordinator_stops_serving_someone_another_process_erased(tmp_path, hasher):
    import numpy as np

    serving = _trained(tmp_path, hasher)
    subject = SUBJECTS[7]
    rows = ROWS.filter(pc.equal(ROWS.column(SUBJECT_ID), subject))
    before = serving.predict(rows)
    other = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)  # another process
    other.forget([subject])
    assert np.array_equal(serving.predict(rows), other.predict(rows))  # the new version answers
    assert not np.array_equal(serving.predict(rows), before)


def test_a_request_id_that_names_the_person_is_refused_before_anything_is_stored(tmp_path, hasher):
    coordinator = _trained(tmp_path, hasher)
    subject = SUBJECTS[6]
    before = sorted(coordinator.store.list_keys(""))
    with pytest.raises(PersonalDataInTextError, match="request id names a subject"):
        coordinator.forget([subject], request_id=f"erase-{subject}")
    assert sorted(coordinator.store.list_keys("")) == before
    assert coordinator.forget([subject], request_id="GDPR-2026-0099").status == "erased"


def test_a_request_id_holding_a_phone_number_is_refused_before_anything_is_stored(tmp_path, hasher):
    # Adversarial review (fourteenth pass): the id is kept in receipts, the tombstone log, MLflow and log lines,
    # and was screened for the subject only (the service's ingest path screened it fully).
    coordinator = _trained(tmp_path, hasher)
    before = sorted(coordinator.store.list_keys(""))
    for forget in (
        lambda: coordinator.forget([SUBJECTS[5]], request_id="020-7946-0958"),
        lambda: coordinator.forget_digests([hasher.digest(SUBJECTS[5])], "020-7946-0958"),
    ):
        with pytest.raises(PersonalDataInTextError, match="request id"):
            forget()
    assert sorted(coordinator.store.list_keys("")) == before
