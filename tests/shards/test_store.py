from __future__ import annotations

from datetime import UTC, datetime

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


def test_local_listings_match_fsspec_find(tmp_path):
    """The local store lists with os.scandir: the same keys, sizes and times as fsspec's find, in key order."""
    store = ObjectStore(str(tmp_path))
    for key, data in {"a/b/c.json": b"1", "a/b.json": b"22", "a/.x.partial": b"", "z/deep/er/k": b"4444"}.items():
        store.put(key, data)
    (tmp_path / "a" / "empty").mkdir()
    for prefix in ("", "a", "a/b", "a/b.json", "z/deep", "missing"):
        base = store._path(prefix).rstrip("/")
        found = store.fs.find(base, detail=True) if store.fs.exists(base) else {}
        expected = sorted(
            (store._key(p), int(i["size"]), datetime.fromtimestamp(i["mtime"], UTC)) for p, i in found.items()
        )
        listed = [(i.key, i.size, i.modified) for i in store.list_info(prefix)]
        assert listed == expected, prefix
        assert store.list_keys(prefix) == [k for k, _, _ in expected], prefix
    assert [v.key for v in store.list_versions("a/")] == ["a/.x.partial", "a/b.json", "a/b/c.json"]
    assert store.exists("a/b.json")
    assert not store.exists("a/nothing")
    assert store.get("z/deep/er/k") == b"4444"


def test_links_inside_a_local_store_are_neither_listed_nor_followed(tmp_path):
    # Adversarial review: the scandir listing followed a link to a folder outside the store, and the
    # purge deleted that folder's files; a link loop made every listing fail.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.bin").write_bytes(b"x")
    store = ObjectStore(str(tmp_path / "store"))
    store.put("staging/real.bin", b"y")
    (tmp_path / "store" / "staging" / "linked").symlink_to(outside)
    (tmp_path / "store" / "staging" / "loop").symlink_to(tmp_path / "store" / "staging")
    (tmp_path / "store" / "staging" / "dangling").symlink_to(tmp_path / "nowhere")
    assert store.list_keys("staging") == ["staging/real.bin"]
    assert [i.key for i in store.list_info("staging")] == ["staging/real.bin"]
    assert [v.key for v in store.list_versions("staging/")] == ["staging/real.bin"]


def test_an_unreadable_local_folder_is_the_typed_storage_error(tmp_path, monkeypatch):
    from expunge.orchestrator.errors import StorageUnavailableError

    store = ObjectStore(str(tmp_path / "store"))
    store.put("ensemble/00000001.json", b"{}")

    def refused(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("expunge.shards.store.os.scandir", refused)
    with pytest.raises(StorageUnavailableError, match="cannot use the store"):
        store.list_keys("ensemble")
    with pytest.raises(StorageUnavailableError, match="cannot use the store"):
        store.list_info("ensemble")
