"""Typed job configuration: one pydantic model per concern, composed into ``JobConfig``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from orchestrator.errors import ConfigError
from shards.config import (
    AnyModelConfig,
    CustomModelConfig,
    Frozen,
    MFConfig,
    MLPConfig,
    ModelConfig,
    StorageConfig,
    TrainingConfig,
)

__all__ = [
    "AnyModelConfig",
    "CustomModelConfig",
    "DataConfig",
    "JobConfig",
    "MFConfig",
    "MLPConfig",
    "ModelConfig",
    "PrivacyConfig",
    "ShardingConfig",
    "StorageConfig",
    "SyntheticRatingsConfig",
    "TrackingConfig",
    "TrainingConfig",
    "load_job_config",
]


class SyntheticRatingsConfig(Frozen):
    """Ratings drawn from latent user/item factors; the demo's default data."""

    users: int = Field(400, ge=2)
    items: int = Field(200, ge=2)
    ratings_per_user: int = Field(30, ge=1)
    latent_dim: int = Field(4, ge=1)
    noise: float = Field(0.3, ge=0.0)
    seed: int = 0

    @model_validator(mode="after")
    def _enough_items(self) -> SyntheticRatingsConfig:
        if self.ratings_per_user > self.items:
            raise ValueError(
                f"ratings_per_user={self.ratings_per_user} exceeds items={self.items}; "
                "lower ratings_per_user or raise items"
            )
        return self


class DataConfig(Frozen):
    """Where the training rows come from."""

    source: Literal["synthetic", "movielens", "parquet"] = "synthetic"
    path: str | None = None
    synthetic: SyntheticRatingsConfig = SyntheticRatingsConfig()
    # Parquet column mapping: canonical name -> column in the file.
    columns: dict[str, str] = Field(default_factory=dict)
    feature_columns: tuple[str, ...] = ()
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    split_seed: int = 0

    @model_validator(mode="after")
    def _path_when_needed(self) -> DataConfig:
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.source={self.source!r} needs data.path")
        return self


class ShardingConfig(Frozen):
    """How rows are split into shards and slices."""

    shards: int = Field(4, ge=1, le=4096)
    slices: int = Field(4, ge=1, le=1024)
    # balanced: all rows of a subject in one (shard, slice), greedy by row count, persisted.
    # hash: all rows of a subject in one (shard, slice) chosen by a keyed hash of the subject alone.
    # row: every row placed on its own (for data without subjects).
    placement: Literal["balanced", "hash", "row"] = "balanced"


class TrackingConfig(Frozen):
    """MLflow tracking; ``uri=None`` means ``sqlite:///<cwd>/mlflow.db``."""

    uri: str | None = None
    experiment: str = "expunge"
    model_name: str = "expunge-ensemble"
    alias: str = "production"
    enabled: bool = True
    # Artifact root of the experiment when Expunge creates it (e.g. s3://bucket/mlflow); None =
    # the tracking server's default. Models (with their copied weights) are stored under it.
    artifact_location: str | None = None
    # The tracking server's own database (e.g. sqlite:////srv/mlflow.db). Purging a model
    # version runs `mlflow gc`, which needs direct access to it when `uri` is http(s)://.
    backend_store_uri: str | None = None


class PrivacyConfig(Frozen):
    """Where the HMAC key for subject digests comes from."""

    subject_key_env: str = "EXPUNGE_SUBJECT_KEY"


class JobConfig(Frozen):
    """One job: data, sharding, training, storage, tracking and privacy settings."""

    data: DataConfig = DataConfig()
    sharding: ShardingConfig = ShardingConfig()
    training: TrainingConfig = TrainingConfig()
    storage: StorageConfig = StorageConfig()
    tracking: TrackingConfig = TrackingConfig()
    privacy: PrivacyConfig = PrivacyConfig()


def load_job_config(path: str | Path) -> JobConfig:
    """Load a YAML job config; every validation problem is listed in one ``ConfigError``."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {str(file)!r} does not exist; pass --config PATH.yaml")
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(file)!r} is not valid YAML: {exc}") from exc
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"config file {str(file)!r} is invalid: {problems}") from exc
