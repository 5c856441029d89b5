"""A shard folder moved to another disk and linked back: refused, never silently left unpurged."""

from __future__ import annotations

import os
import shutil

import pytest

from expunge.orchestrator.config import TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError, LinkInStoreError
from expunge.orchestrator.registry import Lineage
from expunge.shards.shard import shard_prefix
from tests.conftest import TEST_KEY
from tests.engine import job
from tests.lineage._support import email_rows, subjects

ROWS = email_rows(users=16)


def _open(root, registry: bool = False) -> Coordinator:
    lineage = None
    if registry:
        tracking = TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="links", model_name="expunge-links")
        lineage = Lineage(tracking, str(root / "store"))
    return Coordinator(str(root / "store"), SubjectHasher(TEST_KEY), lineage, local_pool)


def _link_away(root, shard: int):
    folder = root / "store" / shard_prefix(shard)
    moved = root / "elsewhere" / folder.name
    moved.parent.mkdir(exist_ok=True)
    shutil.move(folder, moved)
    folder.symlink_to(moved)
    return folder, moved


def _holder(root, subject: str) -> int:
    """The shard a trained store keeps ``subject`` in (an erasure on a copy of the store names it)."""
    copy = root / "probe"
    shutil.copytree(root / "store", copy / "store")
    (shard,) = {s.shard for s in _open(copy).forget([subject]).shards}
    return shard


@pytest.mark.parametrize("registry", [False, True])
def test_a_store_with_a_linked_shard_folder_is_refused_at_open_until_it_is_put_back(tmp_path, registry):
    # With a registry, opening only warned ("could not finish what an earlier run left"), and an
    # erasure in another shard then committed with its purge pending. Refused at open now.
    _open(tmp_path, registry).train(ROWS, job(shards=2, slices=2))
    subject = subjects(ROWS)[3]
    other = 1 - _holder(tmp_path, subject)  # a shard the erasure does not touch
    folder, moved = _link_away(tmp_path, other)
    with pytest.raises(
        LinkInStoreError,
        match=f"{shard_prefix(other)} is a symbolic link inside a local store: put what it links to in its place",
    ):
        _open(tmp_path, registry)
    assert (moved / "manifests").is_dir()  # nothing deleted behind the link
    folder.unlink()
    shutil.move(moved, folder)  # the contents back in place of the link: the erasure goes through
    receipt = _open(tmp_path, registry).forget([subject])
    assert receipt.status == "erased"
    assert not receipt.pending


def test_an_erasure_in_a_shard_folder_linked_while_open_is_refused_before_the_commit(tmp_path):
    _open(tmp_path).train(ROWS, job(shards=2, slices=2))
    subject = subjects(ROWS)[3]
    holder = _holder(tmp_path, subject)
    coordinator = _open(tmp_path)  # a long-lived writer (the service) that opened before the link
    before = coordinator.manifest.version
    _link_away(tmp_path, holder)
    with pytest.raises(ConfigError, match=f"{shard_prefix(holder)} is a symbolic link"):
        coordinator.forget([subject])
    assert coordinator.catalog.latest().version == before  # nothing committed


def test_a_link_met_by_the_purge_leaves_it_pending_and_named_and_purges_the_other_shards(tmp_path):
    _open(tmp_path).train(ROWS, job(shards=2, slices=2))
    subject = subjects(ROWS)[3]
    holder = _holder(tmp_path, subject)
    before = set(_open(tmp_path).store.list_keys(shard_prefix(holder)))
    coordinator = _open(tmp_path)  # a long-lived writer (the service) that opened before the link
    # Debris of a shard the published version does not have (an earlier training with more shards):
    # an adversary's finding, the part-by-part listing reached only the published shards' folders.
    stray = tmp_path / "store" / shard_prefix(7) / "slices" / "00000000-stray.parquet"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"rows of an earlier training")
    os.utime(stray, (1, 1))  # older than the commit below: debris, not a live writer's
    folder, moved = _link_away(tmp_path, 1 - holder)  # the other shard: the erasure itself writes nothing there
    receipt = coordinator.forget([subject], request_id="GDPR-LINK")
    assert not stray.exists()
    assert receipt.status == "erased"  # committed: never reported failed
    assert [p.split(":")[0] for p in receipt.pending] == ["purge"]
    assert "is a symbolic link" in receipt.pending[0]
    # The link held up the whole purge: the subject's old slice in the healthy shard stayed.
    # Now the shards the listing reaches are purged at once; only the linked one waits.
    after = set(coordinator.store.list_keys(shard_prefix(holder)))
    gone = {k for k in before - after if "/slices/" in k}
    assert gone, "the subject's superseded slice was kept"
    assert not after & {k for k in before if "/slices/" in k and k in gone}
    folder.unlink()
    shutil.move(moved, folder)
    again = _open(tmp_path).erasure.finish_pending(receipt)  # the retry (the service's follow-up, the CLI's)
    assert not again.pending
