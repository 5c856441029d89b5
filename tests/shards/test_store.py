from __future__ import annotations

import pytest

from expunge.orchestrator.errors import StorageConflictError, StorageCorruptError
from expunge.shards.store import ObjectStore


def test_exclusive_create_has_one_winner(tmp_path):
    store = ObjectStore(str(tmp_path))
    store.create_exclusive("manifests/00000001.json", b"first")
    with pytest.raises(StorageConflictError, match="another writer"):
        store.create_exclusive("manifests/00000001.json", b"second")
    assert store.get("manifests/00000001.json") == b"first"


def test_file_urls_and_plain_paths_are_the_same_store(tmp_path):
    ObjectStore(f"file://{tmp_path}").put("a/b.bin", b"x")
    assert ObjectStore(str(tmp_path)).get("a/b.bin") == b"x"
    assert ObjectStore(str(tmp_path)).list_keys("a") == ["a/b.bin"]


def test_missing_object_is_a_corrupt_store_error(tmp_path):
    with pytest.raises(StorageCorruptError, match="missing"):
        ObjectStore(str(tmp_path)).get("nope")


def test_delete_reports_only_what_existed(tmp_path):
    store = ObjectStore(str(tmp_path))
    store.put("x", b"1")
    assert [v.key for v in store.delete(["x", "y"])] == ["x"]
    assert not store.exists("x")


@pytest.mark.parametrize("uri", ["gs://bucket/x", "ftp://host/x", "hdfs://nn/x", ""])
def test_unsupported_storage_schemes_are_a_typed_error(uri):
    from expunge.shards.errors import ConfigError

    with pytest.raises(ConfigError, match="not supported"):
        ObjectStore(uri)


def test_an_unreachable_s3_endpoint_is_a_typed_error(monkeypatch):
    from expunge.shards.config import StorageConfig
    from expunge.shards.errors import StorageUnavailableError

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = ObjectStore(StorageConfig(uri="s3://bucket/x", endpoint_url="http://127.0.0.1:9"))
    with pytest.raises(StorageUnavailableError, match=r"127\.0\.0\.1:9"):
        store.list_keys("ensemble")
