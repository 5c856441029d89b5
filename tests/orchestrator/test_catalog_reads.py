"""The catalog keeps what it parsed, and still sees every change: a rewritten, added or missing object."""

from __future__ import annotations

import io
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from expunge.orchestrator.catalog import Catalog, EnsembleManifest, PlacementIndex
from expunge.orchestrator.config import ShardingConfig, TrainingConfig
from expunge.orchestrator.errors import StorageConflictError, StorageCorruptError
from expunge.orchestrator.training.placement import Cell
from expunge.shards.config import MFConfig, StorageConfig
from expunge.shards.store import ObjectStore


def _store(kind: str, tmp_path, request) -> ObjectStore:
    if kind == "local":
        return ObjectStore(str(tmp_path / "store"))
    bucket = request.getfixturevalue("s3_bucket")
    return ObjectStore(StorageConfig(uri=f"s3://{bucket}/catalog", endpoint_url=request.getfixturevalue("s3_server")))


def test_a_tombstone_entry_holds_shard_rows_only_where_given(tmp_path):
    # Fourteenth pass: entries without the shards' rows removed are stored as earlier versions wrote them
    # (their models forbid unknown fields), so only an erasure an ingest joined needs this version to read.
    import json

    store = ObjectStore(str(tmp_path / "store"))
    catalog = Catalog(store)
    catalog.append_tombstones("erased", ["a" * 64], "req-1", rows={"a" * 64: 3})
    catalog.append_tombstones("erased", ["b" * 64], "req-2", rows={"b" * 64: 4}, shard_rows={1: 4})
    first, second = (json.loads(store.get(k)) for k in sorted(store.list_keys("tombstones")))
    assert set(first) == {"sequence", "action", "subject_digests", "request_id", "reason", "created_at", "rows"}
    assert second["shard_rows"] == {"1": 4}
    assert [e.shard_rows for e in Catalog(store).tombstone_log()] == [{}, {1: 4}]


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_tombstone_entry_edited_after_it_was_read_is_caught(kind, tmp_path, request):
    store = _store(kind, tmp_path, request)
    catalog = Catalog(store)
    catalog.append_tombstones("erased", ["a" * 64], "req-1")
    catalog.append_tombstones("erased", ["b" * 64], "req-2")
    assert catalog.tombstones() == {"a" * 64, "b" * 64}
    (first,) = [k for k in store.list_keys("tombstones") if k.endswith("00000001.json")]
    store.put(first, b'{"sequence": 1, "action": "erased"')  # truncated by hand
    with pytest.raises(StorageCorruptError, match="not a valid TombstoneEntry"):
        catalog.tombstones()


def test_a_tombstone_entry_rewritten_with_other_content_is_read_again(tmp_path):
    store = ObjectStore(str(tmp_path / "store"))
    catalog = Catalog(store)
    catalog.append_tombstones("erased", ["a" * 64], "req-1")
    assert catalog.tombstones() == {"a" * 64}
    (key,) = store.list_keys("tombstones")
    data = store.get(key).replace(b"a" * 64, b"c" * 64)  # same size: only its time tells
    time.sleep(0.01)
    store.put(key, data)
    assert catalog.tombstones() == {"c" * 64}


def test_the_latest_manifest_follows_new_versions_and_edits(tmp_path):
    store = ObjectStore(str(tmp_path / "store"))
    catalog = Catalog(store)
    assert catalog.latest() is None
    store.create_exclusive("ensemble/00000009.json", b"{}")
    store.create_exclusive("ensemble/00000010.json", b"not json")
    with pytest.raises(StorageCorruptError, match=r"ensemble/00000010\.json"):  # 10 > 9 by number
        catalog.latest()
    assert catalog.has(9)
    assert not catalog.has(11)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_published_at_is_the_listed_time_of_the_manifest(kind, tmp_path, request):
    store = _store(kind, tmp_path, request)
    store.create_exclusive("ensemble/00000001.json", b"{}")
    store.create_exclusive("ensemble/00000001.json.extra", b"{}")  # a longer key with the same start
    (listed,) = [i for i in store.list_info("ensemble") if i.key == "ensemble/00000001.json"]
    assert Catalog(store).published_at(1) == listed.modified
    assert store.info("ensemble/00000001.json") == listed
    with pytest.raises(StorageCorruptError, match="missing"):
        Catalog(store).published_at(2)


def test_a_placement_written_is_read_back_without_the_store(tmp_path):
    store = ObjectStore(str(tmp_path / "store"))
    catalog = Catalog(store)
    index = PlacementIndex({"a" * 64: {Cell(0, 1): 3}, "b" * 64: {Cell(1, 0): 2, Cell(0, 0): 1}})
    key = catalog.write_placement(index)
    os.remove(os.path.join(store.root, key))  # the writer's own copy answers
    assert catalog.read_placement(key).cells() == index.cells()
    with pytest.raises(StorageCorruptError, match="missing"):
        Catalog(store).read_placement(key)  # another reader goes to the store
    assert index.cells(["b" * 64, "z" * 64]) == {"b" * 64: [Cell(0, 0), Cell(1, 0)]}


def test_two_catalogs_append_tombstones_in_turn_without_gaps_or_repeats(tmp_path):
    store = ObjectStore(str(tmp_path / "store"))
    first, second = Catalog(store), Catalog(store)
    writers = [first, second, first, first, second, first]
    sequences = [w.append_tombstones("erased", [f"{i:064x}"], f"req-{i}").sequence for i, w in enumerate(writers)]
    assert sequences == [1, 2, 3, 4, 5, 6]
    assert [e.request_id for e in Catalog(store).tombstone_log()] == [f"req-{i}" for i in range(6)]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 7), st.integers(0, 3)), max_size=120), st.data())
def test_a_placement_read_back_and_filtered_writes_the_bytes_of_one_built_anew(rows, data):
    digests = [f"{d:064x}" for d, _, _ in rows]
    index = PlacementIndex.from_assignment(digests, [Cell(s, k) for _, s, k in rows])
    sink = io.BytesIO()
    pq.write_table(index.to_table(), sink)
    stored = PlacementIndex.from_table(pq.read_table(io.BytesIO(sink.getvalue())))
    gone = set(data.draw(st.lists(st.sampled_from(digests)))) if digests else set()
    filtered, rebuilt = stored.without(gone), PlacementIndex(index.without(gone).entries)
    assert filtered.entries == rebuilt.entries
    assert _parquet(filtered.to_table()) == _parquet(rebuilt.to_table())


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", write_statistics=False)
    return sink.getvalue()


def test_a_placement_handed_out_cannot_be_changed_in_place(tmp_path):
    # Adversarial review: the catalog shares the index it read with every reader; a caller that
    # trimmed it in place made a later erasure of that subject in the same process "not found".
    store = ObjectStore(str(tmp_path / "store"))
    catalog = Catalog(store)
    key = catalog.write_placement(PlacementIndex({"a" * 64: {Cell(0, 1): 3}}))
    index = catalog.read_placement(key)
    with pytest.raises(TypeError):
        del index.entries["a" * 64]  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        index.entries["a" * 64][Cell(0, 0)] = 1  # type: ignore[index]
    assert catalog.read_placement(key).cells() == {"a" * 64: [Cell(0, 1)]}


def test_a_tombstone_edited_in_place_with_its_time_put_back_is_read_again(tmp_path):
    store = ObjectStore(str(tmp_path / "store"))
    catalog = Catalog(store)
    catalog.append_tombstones("erased", ["a" * 64], "req-1")
    assert catalog.tombstones() == {"a" * 64}
    (key,) = store.list_keys("tombstones")
    path = tmp_path / "store" / key
    before = path.stat()
    path.write_bytes(path.read_bytes().replace(b"a" * 64, b"c" * 64))  # same size, same file
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the same time
    assert catalog.tombstones() == {"c" * 64}


def test_the_latest_manifest_is_followed_forward_and_listed_again_when_gone(tmp_path):
    """Issue 22, sixth pass: a local catalog probes the next number instead of listing every manifest."""
    store = ObjectStore(str(tmp_path / "store"))
    reader, writer = Catalog(store), Catalog(store)  # two processes' catalogs over one folder
    store.create_exclusive("ensemble/00000001.json", b'{"not": "read"}')
    with pytest.raises(StorageCorruptError):
        reader.latest()  # listed: version 1 is the newest
    manifest = _manifest(2)
    writer.publish(manifest)
    writer.publish(manifest.model_copy(update={"version": 3}))
    assert reader.latest().version == 3  # found by number, past two new versions
    os.unlink(tmp_path / "store" / "ensemble" / "00000003.json")  # the newest gone (by hand)
    assert reader.latest().version == 2  # listed again, not the one it saw last
    store.create_exclusive("ensemble/00000005.json", _manifest(5).model_dump_json().encode())
    assert reader.latest().version == 2  # a gap Expunge never writes is not looked past ...
    assert Catalog(store).latest().version == 5  # ... until listed
    # ... but nothing is published into it: a commit planned on version 2 would hide behind version 5
    # (every fresh reader lists, and serves 5). Refused before anything is written (review).
    with pytest.raises(StorageConflictError, match=r"version 5 already exists"):
        reader.publish(_manifest(3))
    assert not store.exists("ensemble/00000003.json")
    assert reader.latest().version == 5  # listed again after the refusal


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_listing_can_leave_out_folders_by_name(kind, tmp_path, request):
    store = _store(kind, tmp_path, request)
    for key in (
        "shards/0001/slices/a.parquet",
        "shards/0001/manifests/00000001.json",
        "shards/0002/checkpoints/b.ckpt",
        "shards/0002/manifests/00000001.json",
        "shards/0002/manifests_of_old/c.json",  # not the folder named: kept
    ):
        store.put(key, b"x")
    every = [v.key for v in store.list_versions("shards/")]
    without = [v.key for v in store.list_versions("shards/", skip=("manifests",))]
    assert without == [k for k in every if "/manifests/" not in k]
    assert without == [
        "shards/0001/slices/a.parquet",
        "shards/0002/checkpoints/b.ckpt",
        "shards/0002/manifests_of_old/c.json",
    ]


def _manifest(version: int) -> EnsembleManifest:
    return EnsembleManifest(
        version=version,
        parent_version=version - 1,
        kind="erasure",
        sharding=ShardingConfig(shards=1, slices=1),
        training=TrainingConfig(),
        model=MFConfig(),
        shard_versions=(1,),
        placement_key="placement/x.parquet",
        rows=0,
    )
