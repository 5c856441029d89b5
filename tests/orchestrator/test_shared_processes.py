"""Training from scratch on a cluster that cannot run every shard at once shares worker processes (issue 22).

Each extra process costs its start-up (interpreter, torch, the shard code) on CPUs the shards
would only time-share: on two cores, ``expunge train`` at S=8 paid it eight times against once
at S=1. The shards' bits must not notice: they are compared with in-process training, and an
erasure after it (also after a host was killed) with training from scratch without the subject.
"""

from __future__ import annotations

import os
import signal

import pytest

from expunge.orchestrator.config import StorageConfig, SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool, ray_pool
from expunge.orchestrator.evidence.exactness import constituents_equal
from expunge.orchestrator.pool import RayShardPool, fit_cpus_per_host, shard_processes
from expunge.pipelines.datasets import synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from expunge.shards.store import ObjectStore
from tests.engine import from_scratch, job, without

ROWS = synthetic_ratings(SyntheticRatingsConfig(users=36, items=20, ratings_per_user=6, seed=5))
CONFIG = job(shards=6, slices=2)  # 0.5 CPU per shard: the test cluster's 2 CPUs run 4 at once


@pytest.mark.parametrize(
    ("shards", "node_cpus", "per_shard", "expected"),
    [
        (8, [2.0], 1.0, 2),  # the two-core machine: two processes
        (8, [64.0], 1.0, 8),  # room for every shard: one process each, as before
        (6, [2.0], 0.5, 4),
        (4, [0.5], 1.0, 1),  # less than one shard's CPUs: still one process
        (4, [2.0], 0.0, 4),  # nothing reserved per shard: one process each
        (3, [2.99], 1.0, 2),
        (3, [0.3], 0.1, 3),  # 0.3 / 0.1 is 2.9999999999999996 in floats: still 3
        (4, [2.0, 2.0], 1.5, 2),  # per node: one each (adversarial review: the cluster's sum gave 2 too, by luck)
        (8, [3.0, 3.0], 2.0, 2),  # the sum, 6 / 2, would be 3: a third host fits on neither node
    ],
)
def test_shard_processes(shards, node_cpus, per_shard, expected):
    assert shard_processes(shards, node_cpus, per_shard) == expected


def _trained_on_ray(tmp_path, hasher):
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=ray_pool)
    coordinator.train(ROWS, CONFIG)
    pool = coordinator.pool
    assert isinstance(pool, RayShardPool)
    return coordinator, pool


@pytest.mark.integration
def test_training_shares_processes_and_gives_the_bits_of_one_process_per_shard(tmp_path, hasher, ray_cluster):
    coordinator, pool = _trained_on_ray(tmp_path, hasher)
    try:
        pids = pool.call("pid", {s: () for s in range(6)})
        assert pool.processes == 4
        assert len(set(pids.values())) == 4
        assert pids[0] == pids[4]  # shard i lives in host i % 4
        here = Coordinator(str(tmp_path / "here"), hasher, pool_factory=local_pool)
        here.train(ROWS, CONFIG, placement=coordinator.placement_index())
        equal = constituents_equal(coordinator.constituent_tensors(), here.constituent_tensors())
        assert equal == dict.fromkeys(range(6), True)

        subject = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))[7]
        assert coordinator.forget([subject]).status == "erased"
        reference = from_scratch(tmp_path, coordinator, without(ROWS, [subject]), CONFIG, hasher)
        equal = constituents_equal(coordinator.constituent_tensors(), reference.constituent_tensors())
        assert equal == dict.fromkeys(range(6), True)
    finally:
        coordinator.close()


@pytest.mark.integration
def test_a_killed_host_is_replaced_and_its_shards_reload_their_published_versions(tmp_path, hasher, ray_cluster):
    coordinator, pool = _trained_on_ray(tmp_path, hasher)
    try:
        subjects = sorted(set(ROWS.column(SUBJECT_ID).to_pylist()))
        homes = coordinator.placement_index().home_cells()
        subject = next(s for s in subjects if homes[hasher.digest(s)].shard in (0, 4))
        shard = homes[hasher.digest(subject)].shard
        os.kill(pool.call("pid", {shard: ()})[shard], signal.SIGKILL)

        assert coordinator.forget([subject]).status == "erased"  # redone on the replacement host
        reference = from_scratch(tmp_path, coordinator, without(ROWS, [subject]), CONFIG, hasher)
        equal = constituents_equal(coordinator.constituent_tensors(), reference.constituent_tensors())
        assert equal == dict.fromkeys(range(6), True)  # the other shard of that host reloaded, unchanged
    finally:
        coordinator.close()


@pytest.mark.integration
def test_actors_get_the_store_folder_the_driver_means_not_a_relative_one(tmp_path, monkeypatch, ray_cluster):
    # Actors of a cluster joined through RAY_ADDRESS run in the cluster's working folder: a relative
    # store path would be another folder there (the driver's manifests here, the shards' objects there).
    monkeypatch.chdir(tmp_path)
    model = CONFIG.training.model.model_copy(update={"num_items": 10})
    pool = RayShardPool(StorageConfig(uri="relative-store"), CONFIG.training, model, {0: None})
    try:
        assert pool.storage.uri == str(tmp_path / "relative-store")
        assert pool.call("ready", {0: ()}) == {0: 0}
    finally:
        pool.shutdown()


def test_a_host_never_asks_more_cpus_than_one_node_has():
    # Adversarial review: two 2-CPU nodes, cpus_per_shard 2.5, S=4 -> one host asking 2.5 CPUs, placeable nowhere.
    assert fit_cpus_per_host(2.5, 4.0, 1, [2.0, 2.0]) == 2.0
    assert fit_cpus_per_host(1.0, 2.0, 2, [2.0]) == 1.0


# Adversarial review: ``~/store`` reached the actors as ``<cwd>/~/store`` (``Path.resolve`` keeps ``~``)
# while the driver's store expanded it: manifests under $HOME, slices with raw rows under the cwd.
TWO = job(shards=2, slices=1)


@pytest.mark.integration
def test_a_home_relative_store_reaches_actors_as_the_folder_the_driver_writes(tmp_path, monkeypatch, ray_cluster):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    model = TWO.training.model.model_copy(update={"num_items": 10})
    pool = RayShardPool(StorageConfig(uri="~/store"), TWO.training, model, {0: None})
    try:
        # Same place: the driver's manifests and the actors' checkpoints in one store.
        assert ObjectStore(pool.storage).root == ObjectStore(StorageConfig(uri="~/store")).root == str(home / "store")
    finally:
        pool.shutdown()


@pytest.mark.integration
def test_training_into_a_home_relative_store_publishes_a_readable_ensemble(tmp_path, monkeypatch, ray_cluster, hasher):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    rows = synthetic_ratings(SyntheticRatingsConfig(users=12, items=10, ratings_per_user=5, seed=1))
    coordinator = Coordinator("~/store", hasher, pool_factory=ray_pool)
    try:
        coordinator.train(rows, TWO)  # was StorageCorruptError: "referenced but missing"
    finally:
        coordinator.close()
    assert not (cwd / "~").exists(), "shard objects were written outside the store, under <cwd>/~"
    assert (home / "store" / "shards").is_dir()
