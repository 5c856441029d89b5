"""A config's settings that a trained store overrides are named in a warning, never silently ignored."""

from __future__ import annotations

import logging

from expunge.orchestrator.config import JobConfig, StorageConfig, SyntheticRatingsConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.pipelines.datasets import synthetic_ratings
from expunge.pipelines.store_settings import overridden_settings, warn_overridden_settings
from tests.conftest import TEST_KEY

TRAINED = {
    "sharding": {"shards": 2, "slices": 2},
    "training": {"model": {"kind": "item_stats", "ranker": "edlae", "factors": 2}, "epochs": 2},
}


def _job(**changes: dict) -> JobConfig:
    raw = {key: dict(value) for key, value in TRAINED.items()}
    for section, values in changes.items():
        raw[section].update(values)
    return JobConfig.model_validate(raw)


def _trained(tmp_path) -> tuple[Coordinator, StorageConfig]:
    storage = StorageConfig(uri=str(tmp_path / "store"))
    coordinator = Coordinator(storage, SubjectHasher(TEST_KEY), pool_factory=local_pool)
    coordinator.train(synthetic_ratings(SyntheticRatingsConfig(users=12, items=8, ratings_per_user=4)), _job())
    return coordinator, storage


def test_the_same_config_overrides_nothing_and_unset_fields_are_no_request(tmp_path) -> None:
    coordinator, _ = _trained(tmp_path)
    assert coordinator.manifest is not None
    assert overridden_settings(_job(), coordinator.manifest) == []  # num_items unset, resolved in the store


def test_each_explicit_difference_is_named_with_both_values(tmp_path, caplog) -> None:
    coordinator, storage = _trained(tmp_path)
    assert coordinator.manifest is not None
    job = _job(
        training={"model": {"kind": "item_stats", "ranker": "dlae", "factors": 2}, "optimizer_kernel": "per_tensor"}
    )
    found = overridden_settings(job, coordinator.manifest)
    assert found == [
        "training.model.ranker: 'edlae' in the store, 'dlae' in the config",
        "training.optimizer_kernel: 'fused' in the store, 'per_tensor' in the config",
    ]
    other_model = _job(training={"model": {"kind": "mf"}}, sharding={"shards": 3})
    assert overridden_settings(other_model, coordinator.manifest) == [
        "sharding.shards: 2 in the store, 3 in the config",
        "training.model.kind: 'item_stats' in the store, 'mf' in the config",
    ]
    with caplog.at_level(logging.WARNING):
        warn_overridden_settings(job, storage, "this erasure")
    assert "this erasure uses the settings the store was trained with" in caplog.text
    assert "ranker" in caplog.text


def test_no_config_or_no_store_warns_of_nothing(tmp_path) -> None:
    assert warn_overridden_settings(None, StorageConfig(uri=str(tmp_path)), "this erasure") == []
    assert warn_overridden_settings(_job(), StorageConfig(uri=str(tmp_path / "absent")), "this erasure") == []
