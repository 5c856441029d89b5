"""A copy of a store must not publish to its original's MLflow registry; a moved store takes it over."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from expunge.orchestrator.config import TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.registry import Lineage
from expunge.orchestrator.registry.tracking import store_tag, stored_elsewhere
from tests.conftest import TEST_KEY
from tests.engine import job
from tests.lineage._support import email_rows, subjects

ROWS = email_rows(users=16)
TRACKING_NAME = "expunge-copies"


def _tracking(root: Path) -> TrackingConfig:
    return TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="copies", model_name=TRACKING_NAME)


def _open(registry_root: Path, store: Path) -> Coordinator:
    lineage = Lineage(_tracking(registry_root), str(store))
    return Coordinator(str(store), SubjectHasher(TEST_KEY), lineage, local_pool)


def _registry_state(coordinator: Coordinator) -> tuple[str | None, list[str]]:
    client = coordinator.lineage.client
    versions = sorted(v.version for v in client.search_model_versions(f"name = '{TRACKING_NAME}'"))
    return coordinator.lineage.current_version(), versions


def test_a_copy_is_refused_before_it_writes_to_the_originals_registry(tmp_path, caplog):
    # A new user's finding: `forget` on a copy moved the original's alias to the copy's model and
    # purged the original's live version; a copy older than an erasure served the erased subject again.
    original = tmp_path / "store"
    _open(tmp_path, original).train(ROWS, job(shards=2, slices=2))
    copy = tmp_path / "copy" / "store"
    shutil.copytree(original, copy)
    owner = _open(tmp_path, original)
    before = _registry_state(owner)
    with pytest.raises(ConfigError, match=r"one is a copy of the other.*Nothing was changed"):
        _open(tmp_path, copy).forget([subjects(ROWS)[3]])
    deferred = Lineage(_tracking(tmp_path), str(copy), deferred=True)  # as the CLI opens it
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError, match="one is a copy of the other"):
        Coordinator(str(copy), SubjectHasher(TEST_KEY), deferred, local_pool).forget([subjects(ROWS)[3]])
    assert "could not finish what an earlier run left" not in caplog.text  # nothing was left: refused, once
    assert _registry_state(owner) == before
    receipt = owner.forget([subjects(ROWS)[3]])  # the original goes on as before
    assert receipt.status == "erased"
    assert owner.lineage.current_version() == receipt.registry_version_after


def test_a_moved_store_takes_its_registry_over_and_tags_its_new_place(tmp_path, caplog):
    original = tmp_path / "store"
    _open(tmp_path, original).train(ROWS, job(shards=2, slices=2))
    moved = tmp_path / "moved" / "store"
    moved.parent.mkdir()
    shutil.move(original, moved)  # the old place holds no store any more
    with caplog.at_level(logging.WARNING, logger="expunge.orchestrator.registry.ownership"):
        coordinator = _open(tmp_path, moved)
        receipt = coordinator.forget([subjects(ROWS)[3]])
    assert caplog.text.count("the store moved to") == 1  # said once, though the job reconciles again
    assert receipt.status == "erased"
    served = coordinator.lineage.client.get_model_version(TRACKING_NAME, receipt.registry_version_after)
    assert served.tags["expunge.storage"] == str(moved.resolve())
    # A new user's finding: the scan of the moved store left out the runs it made at its old place.
    from expunge.orchestrator.catalog import Catalog
    from expunge.orchestrator.evidence.scan_outside import scan_registry_text
    from expunge.orchestrator.registry.checks import AuditView
    from expunge.shards.store import ObjectStore

    view = AuditView(Catalog(ObjectStore(str(moved))).latest().registry, str(moved))
    every = coordinator.lineage.client.search_runs([coordinator.lineage.experiment_id])
    assert {r.data.tags["expunge.storage"] for r in every} == {str(original.resolve()), str(moved.resolve())}
    assert scan_registry_text(view, subjects(ROWS)[3])[1] == len(every)


def test_which_tags_name_another_store(tmp_path):
    here = tmp_path / "store"
    assert not stored_elsewhere("", str(here))  # nothing recorded
    assert not stored_elsewhere("store", str(here))  # relative, as typed before tags were absolute: unknown
    assert not stored_elsewhere(str(here), f"file://{here}")
    assert not stored_elsewhere(store_tag(str(here)), str(here))
    assert stored_elsewhere(str(tmp_path / "other"), str(here))
    assert stored_elsewhere("s3://bucket/a", "s3://bucket/b")
    assert not stored_elsewhere("s3://bucket/a", "s3://bucket/a")
    # Adversarial review: other spellings of the same store read as "another store", so tracking off
    # was accepted on the original itself.
    assert not stored_elsewhere(store_tag(str(here)), f"local://{here}")
    assert not stored_elsewhere("s3://bucket/a", "s3a://bucket/a/")
    assert store_tag("s3a://bucket/a/") == "s3://bucket/a"


def test_a_copy_goes_its_own_way_with_tracking_off_or_a_registry_of_its_own(tmp_path):
    # The refusal's advice must work: a copy's recorded registry serves the original, so a job on the
    # copy may switch tracking off or name another registry (refused for a store its registry serves).
    from expunge.orchestrator.catalog import Catalog
    from expunge.orchestrator.config import StorageConfig
    from expunge.orchestrator.registry.ownership import bind_writer
    from expunge.shards.store import ObjectStore

    original = tmp_path / "store"
    _open(tmp_path, original).train(ROWS, job(shards=2, slices=2))
    copy = tmp_path / "copy" / "store"
    shutil.copytree(original, copy)
    recorded = Catalog(ObjectStore(str(original))).latest().registry
    owner = _open(tmp_path, original)
    before = _registry_state(owner)
    off = TrackingConfig(enabled=False)
    with pytest.raises(ConfigError, match="switches tracking off"):
        bind_writer(recorded, off, None, StorageConfig(uri=str(original)))  # the original: refused as ever
    assert not bind_writer(recorded, off, None, StorageConfig(uri=str(copy))).enabled
    Coordinator(str(copy), SubjectHasher(TEST_KEY), None, local_pool).forget([subjects(ROWS)[3]])
    own = f"sqlite:///{tmp_path / 'copy' / 'mlflow.db'}"
    tracking = bind_writer(recorded, None, own, StorageConfig(uri=str(copy)))
    assert tracking.uri == own
    lineage = Lineage(tracking, str(copy))
    receipt = Coordinator(str(copy), SubjectHasher(TEST_KEY), lineage, local_pool).forget([subjects(ROWS)[5]])
    assert receipt.registry_version_after is not None  # in the copy's own registry
    assert _registry_state(owner) == before  # the original's registry untouched throughout
    # A new user's finding: verify without --tracking-uri judged the copy by the original's registry
    # ("version N held the subject: it still loads") without a word of why or of the fix.
    import typer
    from typer.testing import CliRunner

    from expunge.pipelines import verify as verify_recipe

    app = typer.Typer()
    app.command()(verify_recipe.main)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "subject.key").write_text(TEST_KEY.decode())
    common = [
        "--storage",
        str(copy),
        "--request",
        receipt.request_id,
        "--no-record",
        "--workdir",
        str(tmp_path / "keys"),
    ]
    judged = CliRunner(env={"EXPUNGE_SUBJECT_KEY": ""}).invoke(app, common)
    assert judged.exit_code == 1
    assert "pass --tracking-uri naming it" in " ".join(judged.output.split())
    ok = CliRunner(env={"EXPUNGE_SUBJECT_KEY": ""}).invoke(app, [*common, "--tracking-uri", own])
    assert ok.exit_code == 0, ok.output


def test_a_stale_copy_does_not_take_over_a_registry_whose_store_moved_away(tmp_path):
    # A new user's finding: with the original moved, any copy "took the registry over"; a copy older
    # than an erasure then served the erased subject in production, and the real store was refused.
    from expunge.orchestrator.errors import RegistryOfAnotherStoreError

    original = tmp_path / "store"
    _open(tmp_path, original).train(ROWS, job(shards=2, slices=2))
    stale = tmp_path / "trial" / "store"
    shutil.copytree(original, stale)  # taken before the erasure below
    owner = _open(tmp_path, original)
    owner.forget([subjects(ROWS)[3]])
    before = _registry_state(owner)
    moved = tmp_path / "bigger-disk" / "store"
    moved.parent.mkdir()
    shutil.move(original, moved)
    with pytest.raises(RegistryOfAnotherStoreError, match="one is a copy of the other"):
        _open(tmp_path, stale)
    mover = _open(tmp_path, moved)  # the real store, moved: it published what the alias serves
    assert _registry_state(mover) == before
    assert mover.forget([subjects(ROWS)[5]]).status == "erased"


def test_verify_of_a_copy_run_with_tracking_off_leaves_the_originals_registry_alone(tmp_path, monkeypatch):
    # A new user's finding: verify ignored tracking off and judged the copy's erasure by the
    # original's registry ("version 2 still loads"), as if production served the erased person;
    # an adversary's: the fix reached only the helper, not the program.
    import typer
    from typer.testing import CliRunner

    from expunge.pipelines import verify as verify_recipe

    original = tmp_path / "store"
    _open(tmp_path, original).train(ROWS, job(shards=2, slices=2))
    # A new user's finding: an erasure the original registered before the copy was taken failed the
    # copy's receipt log and registry checks ("the registry binding was removed"), so this documented
    # way of working on a copy could never verify.
    earlier = _open(tmp_path, original).forget([subjects(ROWS)[7]])
    assert earlier.registry_version_after is not None
    copy = tmp_path / "copy" / "store"
    shutil.copytree(original, copy)
    receipt = Coordinator(str(copy), SubjectHasher(TEST_KEY), None, local_pool).forget([subjects(ROWS)[3]])
    config = tmp_path / "copy" / "copy.yaml"
    config.write_text(f"storage: {{uri: {copy}}}\ntracking: {{enabled: false}}\n")
    monkeypatch.delenv("EXPUNGE_SUBJECT_KEY", raising=False)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "subject.key").write_text(TEST_KEY.decode())
    app = typer.Typer()
    app.command()(verify_recipe.main)
    common = ["--request", receipt.request_id, "--no-record", "--workdir", str(tmp_path / "keys"), "--json"]
    result = CliRunner().invoke(app, ["--config", str(config), "--storage", str(copy), *common])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    (registry,) = [c for c in report["checks"] if c["name"] == "registry"]
    assert registry["status"] == "skipped"
    assert "copy run with tracking off" in registry["summary"]
    for request in (earlier.request_id, receipt.request_id):
        args = ["--config", str(config), "--storage", str(copy), "--request", request, *common[2:]]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        checks = {c["name"]: c["status"] for c in json.loads(result.output[result.output.index("{") :])["checks"]}
        assert checks["registry"] == "skipped"
        assert checks["receipt_log"] == "passed"
    judged = CliRunner().invoke(app, ["--storage", str(copy), *common])  # no config: the recorded registry
    assert json.loads(judged.output[judged.output.index("{") :])["status"] == "failed"


def test_asking_a_missing_sqlite_registry_whom_it_serves_creates_no_database(tmp_path):
    # Adversarial review: the question created an empty mlflow.db at the recorded path.
    from expunge.orchestrator.catalog import RegistryBinding
    from expunge.orchestrator.config import StorageConfig
    from expunge.orchestrator.registry.ownership import bind_writer

    missing = tmp_path / "gone" / "mlflow.db"
    recorded = RegistryBinding(tracking_uri=f"sqlite:///{missing}", experiment="e", model_name="m", alias="production")
    with pytest.raises(ConfigError, match="switches tracking off"):
        bind_writer(recorded, TrackingConfig(enabled=False), None, StorageConfig(uri=str(tmp_path / "store")))
    assert not missing.exists()
    assert not missing.parent.exists()


@pytest.fixture
def second_s3_server() -> Iterator[str]:
    """Another S3 API server on loopback, in a process of its own (a staging server beside production's;
    moto's servers in one process share one store of buckets): yields its endpoint."""
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.conftest import _free_port

    port = _free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):  # up in about a second; a fixture that never comes up fails below
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


def _mirror(source: str, target: str, bucket: str, delete: bool = False) -> None:
    """Copy every object of ``bucket`` from one S3 server to a bucket of the same name on another."""
    import boto3

    from_client, to_client = boto3.client("s3", endpoint_url=source), boto3.client("s3", endpoint_url=target)
    to_client.create_bucket(Bucket=bucket)
    for page in from_client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            body = from_client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            to_client.put_object(Bucket=bucket, Key=item["Key"], Body=body)
            if delete:
                from_client.delete_object(Bucket=bucket, Key=item["Key"])


def test_a_mirror_on_another_s3_endpoint_is_a_copy_not_the_original(tmp_path, s3_bucket, s3_server, second_s3_server):
    # Adversarial review: the tag named only the bucket and prefix, so a mirror of production's bucket
    # on a staging server (same bucket name, same prefix) looked like production itself: `forget` there
    # moved production's alias to the mirror's model and purged its live version.
    from expunge.orchestrator.config import StorageConfig
    from expunge.orchestrator.errors import RegistryOfAnotherStoreError
    from expunge.orchestrator.registry.tracking import ENDPOINT_TAG

    uri = f"s3://{s3_bucket}/expunge"
    production = StorageConfig(uri=uri, endpoint_url=s3_server)
    staging = StorageConfig(uri=uri, endpoint_url=second_s3_server)

    def open_on(storage: StorageConfig) -> Coordinator:
        return Coordinator(storage, SubjectHasher(TEST_KEY), Lineage(_tracking(tmp_path), storage), local_pool)

    open_on(production).train(ROWS, job(shards=2, slices=2))
    _mirror(s3_server, second_s3_server, s3_bucket)
    owner = open_on(production)
    before = _registry_state(owner)
    served = owner.lineage.client.get_model_version(TRACKING_NAME, before[0])
    assert served.tags["expunge.storage"] == uri
    assert served.tags[ENDPOINT_TAG] == s3_server
    with pytest.raises(RegistryOfAnotherStoreError, match=rf"endpoint {s3_server}.*one is a copy of the other"):
        open_on(staging).forget([subjects(ROWS)[3]])
    assert _registry_state(owner) == before
    from expunge.orchestrator.catalog import Catalog
    from expunge.orchestrator.registry.ownership import bind_writer
    from expunge.shards.store import ObjectStore

    recorded = Catalog(ObjectStore(staging)).latest().registry  # the mirror may go its own way, tracking off
    assert not bind_writer(recorded, TrackingConfig(enabled=False), None, staging).enabled
    with pytest.raises(ConfigError, match="switches tracking off"):
        bind_writer(recorded, TrackingConfig(enabled=False), None, production)  # production: refused as ever
    assert owner.forget([subjects(ROWS)[3]]).status == "erased"  # production goes on as before

    # Moved whole to the other server (nothing left on the first): the mirror takes the registry over.
    _mirror(s3_server, second_s3_server, s3_bucket, delete=True)
    mover = open_on(staging)
    receipt = mover.forget([subjects(ROWS)[5]])
    assert receipt.status == "erased"
    tags = mover.lineage.client.get_model_version(TRACKING_NAME, receipt.registry_version_after).tags
    assert tags[ENDPOINT_TAG] == second_s3_server


def test_which_endpoints_name_another_store(monkeypatch, tmp_path):
    from expunge.orchestrator.config import StorageConfig
    from expunge.orchestrator.registry.tracking import store_endpoint

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    # Adversarial review: an endpoint set in an AWS profile (how botocore and s3fs reach it) was
    # tagged "aws", so a mirror reached through a staging profile passed for production.
    config = tmp_path / "aws-config"
    config.write_text("[profile staging]\nendpoint_url = http://minio.staging:9000\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    assert store_endpoint(StorageConfig(uri="s3://b/p", profile="staging")) == "http://minio.staging:9000"
    monkeypatch.setenv("AWS_PROFILE", "staging")
    assert store_endpoint(StorageConfig(uri="s3://b/p")) == "http://minio.staging:9000"
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")  # botocore then goes to AWS
    assert store_endpoint(StorageConfig(uri="s3://b/p")) == "aws"
    monkeypatch.delenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
    monkeypatch.delenv("AWS_PROFILE")
    assert store_endpoint(StorageConfig(uri="s3://b/p", region="eu-west-1")) == "aws"
    assert store_endpoint(StorageConfig(uri="s3://b/p", endpoint_url="https://s3.eu-west-1.amazonaws.com")) == "aws"
    assert store_endpoint(StorageConfig(uri="s3://b/p", endpoint_url="http://minio:80")) == "http://minio"
    assert store_endpoint(StorageConfig(uri="/data/store")) == ""
    assert store_endpoint(StorageConfig(uri="s3://b/p")) == "aws"
    assert (
        store_endpoint(StorageConfig(uri="s3://b/p", endpoint_url="HTTP://LocalHost:9000/")) == "http://127.0.0.1:9000"
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.internal:9000")
    assert store_endpoint(StorageConfig(uri="s3a://b/p")) == "http://minio.internal:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://[::1]:9000")
    assert store_endpoint(StorageConfig(uri="s3://b/p")) == "http://127.0.0.1:9000"
    assert stored_elsewhere("s3://b/p", "s3://b/p", "aws", "http://127.0.0.1:9000")
    assert not stored_elsewhere("s3://b/p", "s3://b/p/", "http://127.0.0.1:9000", "http://127.0.0.1:9000")
    assert not stored_elsewhere("s3://b/p", "s3://b/p", "", "http://127.0.0.1:9000")  # recorded before the tag


def test_a_copy_whose_original_cannot_be_seen_is_refused_until_told_to_take_over(tmp_path, caplog):
    # Adversarial review: a store whose recorded folder did not exist here (another host's, not mounted)
    # looked moved, so a copy on a second machine took production's registry over.
    from expunge.orchestrator.catalog import Catalog
    from expunge.orchestrator.config import StorageConfig
    from expunge.orchestrator.errors import RegistryOfAnotherStoreError
    from expunge.orchestrator.registry.ownership import bind_writer
    from expunge.shards.store import ObjectStore

    original = tmp_path / "host-a" / "store"
    _open(tmp_path, original).train(ROWS, job(shards=2, slices=2))
    copy = tmp_path / "host-b" / "store"
    shutil.copytree(original, copy)
    stale = tmp_path / "host-c" / "store"
    shutil.copytree(original, stale)
    taking = _tracking(tmp_path).model_copy(update={"take_over_from": f"file://{original}/"})

    def taking_over(store: Path) -> Coordinator:
        return Coordinator(str(store), SubjectHasher(TEST_KEY), Lineage(taking, str(store)), local_pool)

    # A new user's finding: take_over_from moved the alias off an original this host sees, which
    # still held its ensemble (the refusal's advice made that easy to do by accident).
    with pytest.raises(RegistryOfAnotherStoreError, match="still holds an ensemble, so it is not gone"):
        taking_over(copy)
    _open(tmp_path, original).forget([subjects(ROWS)[7]])  # after the stale copy was taken
    shutil.move(tmp_path / "host-a", tmp_path / "away")  # host A's disk: not mounted on this host
    with pytest.raises(RegistryOfAnotherStoreError, match="This store did not publish the version the alias serves"):
        taking_over(stale)
    shutil.rmtree(copy)
    shutil.copytree(tmp_path / "away" / "store", copy)  # a copy of the store as it is now
    from mlflow import MlflowClient

    served_before = MlflowClient(_tracking(tmp_path).uri).get_model_version_by_alias(TRACKING_NAME, "production")
    with pytest.raises(RegistryOfAnotherStoreError, match=rf"tracking.take_over_from: '{original}'"):
        _open(tmp_path, copy)
    recorded = Catalog(ObjectStore(str(copy))).latest().registry  # the copy may go its own way, tracking off
    assert not bind_writer(recorded, TrackingConfig(enabled=False), None, StorageConfig(uri=str(copy))).enabled
    wrong = _tracking(tmp_path).model_copy(update={"take_over_from": str(tmp_path / "host-z" / "store")})
    with pytest.raises(RegistryOfAnotherStoreError, match="host-z/store', not that store"):
        Coordinator(str(copy), SubjectHasher(TEST_KEY), Lineage(wrong, str(copy)), local_pool)
    with caplog.at_level(logging.WARNING, logger="expunge.orchestrator.registry.ownership"):
        mover = taking_over(copy)
        receipt = mover.forget([subjects(ROWS)[3]])
    assert "which tracking.take_over_from names: the store moved to" in caplog.text
    assert receipt.status == "erased"
    assert receipt.registry_version_after != served_before.version
    served = mover.lineage.client.get_model_version(TRACKING_NAME, receipt.registry_version_after)
    assert served.tags["expunge.storage"] == str(copy.resolve())


def test_a_stale_copy_whose_versions_are_numbered_alike_is_not_the_originals_history(tmp_path):
    # Adversarial review: history was matched by version number and request id, and every CLI
    # training is request "train": a copy taken before an erasure, trained twice with tracking off,
    # numbered its versions like the original's and took the registry over, serving the erased person.
    from expunge.orchestrator.errors import RegistryOfAnotherStoreError

    original = tmp_path / "host-a" / "store"
    _open(tmp_path, original).train(ROWS, job(shards=2, slices=2), request_id="train")
    stale = tmp_path / "host-b" / "store"
    shutil.copytree(original, stale)
    owner = _open(tmp_path, original)
    owner.forget([subjects(ROWS)[3]])
    served = owner.lineage.client.get_model_version_by_alias(TRACKING_NAME, "production")
    untracked = Coordinator(str(stale), SubjectHasher(TEST_KEY), None, local_pool)
    untracked.train(ROWS, job(shards=2, slices=2), request_id=served.tags["expunge.request_id"])
    assert untracked.manifest.version == int(served.tags["expunge.ensemble_version"])  # numbered alike
    shutil.move(tmp_path / "host-a", tmp_path / "away")  # host A not mounted here
    taking = _tracking(tmp_path).model_copy(update={"take_over_from": str(original)})
    with pytest.raises(RegistryOfAnotherStoreError, match="This store did not publish the version the alias serves"):
        Coordinator(str(stale), SubjectHasher(TEST_KEY), Lineage(taking, str(stale)), local_pool)


def test_a_copy_at_the_same_path_that_went_its_own_way_is_refused_and_may_go_on_alone(tmp_path):
    # Adversarial review: a copy at the same path on another host (rsync host-a:/data/store
    # /data/store) was the store itself to every check: taken before an erasure, it moved the alias
    # to its model, which held the erased person, with no refusal and no warning.
    from expunge.orchestrator.catalog import Catalog
    from expunge.orchestrator.config import StorageConfig
    from expunge.orchestrator.errors import RegistryOfAnotherStoreError
    from expunge.orchestrator.registry.ownership import bind_writer
    from expunge.shards.store import ObjectStore

    place = tmp_path / "data" / "store"
    _open(tmp_path, place).train(ROWS, job(shards=2, slices=2))
    shutil.copytree(place, tmp_path / "host-b-disk")  # host B's copy, taken now
    owner = _open(tmp_path, place)
    owner.forget([subjects(ROWS)[3]])
    before = _registry_state(owner)
    shutil.move(place, tmp_path / "host-a-disk")  # host B's view of /data/store: its own copy there
    shutil.move(tmp_path / "host-b-disk", place)
    with pytest.raises(RegistryOfAnotherStoreError, match="this store never published that version as it is"):
        _open(tmp_path, place)
    recorded = Catalog(ObjectStore(str(place))).latest().registry  # host B may go on alone
    assert not bind_writer(recorded, TrackingConfig(enabled=False), None, StorageConfig(uri=str(place))).enabled
    alone = Coordinator(str(place), SubjectHasher(TEST_KEY), None, local_pool).forget([subjects(ROWS)[5]])
    # A second adversary's finding: verify of host B's erasure, against the recorded registry, passed
    # ("the alias serves version 2, made after the erasure"): that v2 is host A's, not B's.
    from expunge.orchestrator.registry.checks import AuditView

    problems = AuditView(recorded, str(place)).check_erasure(alone.model_version_after).problems
    assert any("this store never published as it is" in p for p in problems), problems
    shutil.move(place, tmp_path / "host-b-disk")
    shutil.move(tmp_path / "host-a-disk", place)  # host A, the real store: as before
    assert _registry_state(_open(tmp_path, place)) == before
    with pytest.raises(ConfigError, match="switches tracking off"):
        bind_writer(recorded, TrackingConfig(enabled=False), None, StorageConfig(uri=str(place)))


def test_a_web_servers_404_at_the_originals_address_is_not_an_empty_store(tmp_path, s3_bucket, s3_server):
    # Adversarial review: from the mirror's network, production's address answered 404 (a proxy, a
    # web server): read as "holds no ensemble", so the mirror took production's registry over.
    import subprocess
    import sys
    import time
    import urllib.request

    from expunge.orchestrator.config import StorageConfig
    from expunge.orchestrator.errors import RegistryOfAnotherStoreError
    from tests.conftest import _free_port

    port = _free_port()
    production_endpoint = f"http://127.0.0.1:{port}"

    def serve(*command: str) -> subprocess.Popen:
        server = subprocess.Popen(
            [sys.executable, "-m", *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(300):
            try:
                urllib.request.urlopen(production_endpoint, timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                time.sleep(0.1)
        return server

    uri = f"s3://{s3_bucket}/expunge"
    production = StorageConfig(uri=uri, endpoint_url=production_endpoint)
    staging = StorageConfig(uri=uri, endpoint_url=s3_server)
    moto = serve("moto.server", "-H", "127.0.0.1", "-p", str(port))
    try:
        import boto3

        boto3.client("s3", endpoint_url=production_endpoint).create_bucket(Bucket=s3_bucket)
        lineage = Lineage(_tracking(tmp_path), production)
        Coordinator(production, SubjectHasher(TEST_KEY), lineage, local_pool).train(ROWS, job(shards=2, slices=2))
        source, target = (
            boto3.client("s3", endpoint_url=production_endpoint),
            boto3.client("s3", endpoint_url=s3_server),
        )
        for item in source.list_objects_v2(Bucket=s3_bucket)["Contents"]:
            body = source.get_object(Bucket=s3_bucket, Key=item["Key"])["Body"].read()
            target.put_object(Bucket=s3_bucket, Key=item["Key"], Body=body)
    finally:
        moto.terminate()
        moto.wait(timeout=30)
    web = serve("http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path))
    try:
        with pytest.raises(RegistryOfAnotherStoreError, match="cannot be seen from here"):
            Coordinator(staging, SubjectHasher(TEST_KEY), Lineage(_tracking(tmp_path), staging), local_pool)
    finally:
        web.terminate()
        web.wait(timeout=30)


def test_the_same_s3_server_by_another_name_is_this_store_and_never_lets_it_off_its_registry(
    tmp_path, s3_bucket, s3_server
):
    # Adversarial review: the store reached by another name of its server (minio:9000 inside a
    # compose network, localhost:9000 outside) was "another store": its own erasure was refused, and
    # then tracking off was accepted on production itself, whose registry kept serving the person.
    import socket

    from expunge.orchestrator.catalog import Catalog
    from expunge.orchestrator.config import StorageConfig
    from expunge.orchestrator.errors import RegistryOfAnotherStoreError
    from expunge.orchestrator.registry.ownership import bind_writer
    from expunge.orchestrator.registry.tracking import ENDPOINT_TAG
    from expunge.shards.store import ObjectStore

    name = socket.gethostname()  # another name of this host's loopback, where the host file says so
    if name.lower() in {"localhost", "127.0.0.1"} or socket.gethostbyname(name) != "127.0.0.1":
        pytest.skip(f"this host's name {name!r} does not resolve to 127.0.0.1")
    uri = f"s3://{s3_bucket}/expunge"
    named = StorageConfig(uri=uri, endpoint_url=s3_server)
    other_name = StorageConfig(uri=uri, endpoint_url=s3_server.replace("127.0.0.1", name))  # the same server
    Coordinator(named, SubjectHasher(TEST_KEY), Lineage(_tracking(tmp_path), named), local_pool).train(
        ROWS, job(shards=2, slices=2)
    )
    recorded = Catalog(ObjectStore(other_name)).latest().registry
    with pytest.raises(ConfigError, match="switches tracking off"):
        bind_writer(recorded, TrackingConfig(enabled=False), None, other_name)
    lineage = Lineage(_tracking(tmp_path), other_name)
    receipt = Coordinator(other_name, SubjectHasher(TEST_KEY), lineage, local_pool).forget([subjects(ROWS)[3]])
    assert receipt.status == "erased"
    served = lineage.client.get_model_version(TRACKING_NAME, receipt.registry_version_after)
    assert served.tags[ENDPOINT_TAG] == other_name.endpoint_url
    assert not ObjectStore(named).list_keys("probes")  # the nonce went
    # A second adversary's finding: under another name the probe said "this very store" and the check
    # for a fork was skipped, so the bucket restored from a backup older than an erasure published.
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server)
    backup = {
        item["Key"]: client.get_object(Bucket=s3_bucket, Key=item["Key"])["Body"].read()
        for item in client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    }
    Coordinator(named, SubjectHasher(TEST_KEY), Lineage(_tracking(tmp_path), named), local_pool).forget(
        [subjects(ROWS)[5]]
    )
    for item in client.list_objects_v2(Bucket=s3_bucket)["Contents"]:
        client.delete_object(Bucket=s3_bucket, Key=item["Key"])
    for key, body in backup.items():  # the bucket restored from the backup, older than that erasure
        client.put_object(Bucket=s3_bucket, Key=key, Body=body)
    for storage in (named, other_name):
        with pytest.raises(RegistryOfAnotherStoreError, match="or an older backup of it"):
            Coordinator(storage, SubjectHasher(TEST_KEY), Lineage(_tracking(tmp_path), storage), local_pool)


def test_a_probe_left_by_a_killed_writer_goes_with_the_next_purge(tmp_path):
    # A second adversary's finding: a nonce object whose writer died before deleting it stayed for good.
    import os

    store = tmp_path / "store"
    _open(tmp_path, store).train(ROWS, job(shards=2, slices=2))
    left = store / "probes" / "0123456789abcdef" / "nonce"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"which store am I")
    os.utime(left, (1, 1))  # older than the next commit
    assert _open(tmp_path, store).forget([subjects(ROWS)[3]]).status == "erased"
    assert not left.exists()
