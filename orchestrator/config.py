"""Typed job configuration: one pydantic model per concern, composed into ``JobConfig``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.errors import ConfigError

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


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticRatingsConfig(_Frozen):
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


class DataConfig(_Frozen):
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


class ShardingConfig(_Frozen):
    """How rows are split into shards and slices."""

    shards: int = Field(4, ge=1, le=4096)
    slices: int = Field(4, ge=1, le=1024)
    # balanced: all rows of a subject in one (shard, slice), greedy by row count, persisted.
    # hash: all rows of a subject in one (shard, slice) chosen by a keyed hash of the subject alone.
    # row: every row placed on its own (for data without subjects).
    placement: Literal["balanced", "hash", "row"] = "balanced"


class MFConfig(_Frozen):
    """Biased matrix factorisation for ratings (the recommender case)."""

    kind: Literal["mf"] = "mf"
    embedding_dim: int = Field(16, ge=1)
    # Size of the item catalogue; item ids must lie in [0, num_items). 0 = infer from the data
    # at first training and persist it (items are catalogue data, not personal data).
    num_items: int = Field(0, ge=0)
    init_std: float = Field(0.05, gt=0.0)
    # L2 penalty on the factors and biases a batch touches (per occurrence, as in Funk SVD).
    l2: float = Field(0.1, ge=0.0)


class MLPConfig(_Frozen):
    """Multi-layer perceptron classifier over a fixed-width feature vector."""

    kind: Literal["mlp"] = "mlp"
    num_features: int = Field(8, ge=1)
    num_classes: int = Field(2, ge=2)
    hidden: tuple[int, ...] = (32,)


class CustomModelConfig(_Frozen):
    """Your own model family: ``factory`` is ``"package.module:Name"``, called with ``options``.

    The factory returns an object implementing ``shards.models.SisaModel``; it must be
    importable wherever shards run (under ``ray job submit --working-dir .`` that is the
    submitted folder).
    """

    kind: Literal["custom"] = "custom"
    factory: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    options: dict[str, Any] = Field(default_factory=dict)


AnyModelConfig = MFConfig | MLPConfig | CustomModelConfig
ModelConfig = Annotated[AnyModelConfig, Field(discriminator="kind")]


class TrainingConfig(_Frozen):
    """Deterministic slice-by-slice training."""

    model: ModelConfig = MFConfig()
    # Budget in full-shard epochs; spread over the R slice steps (every step gets >= 1).
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(0.01, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    seed: int = 0
    threads_per_shard: int = Field(1, ge=1)
    # Ray CPUs reserved per shard actor; lowered automatically if the cluster is smaller.
    cpus_per_shard: float = Field(1.0, ge=0.0)

    def fingerprint(self) -> str:
        """Stable digest of every setting that changes the trained tensors."""
        relevant = self.model_dump(mode="json", exclude={"cpus_per_shard"})
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


class StorageConfig(_Frozen):
    """Where shard state lives: a local folder, ``file://`` or ``s3://`` URL.

    Credentials never go here: s3fs reads them from the standard AWS environment variables,
    profile files or instance roles. ``endpoint_url`` defaults to ``AWS_ENDPOINT_URL_S3`` /
    ``AWS_ENDPOINT_URL`` when those are set.
    """

    uri: str = "./lethe-store"
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None

    def storage_options(self) -> dict[str, Any]:
        """fsspec options for the URI's protocol (empty for local folders)."""
        if not self.uri.startswith(("s3://", "s3a://")):
            return {}
        client: dict[str, str] = {}
        if self.endpoint_url:
            client["endpoint_url"] = self.endpoint_url
        if self.region:
            client["region_name"] = self.region
        options: dict[str, Any] = {"client_kwargs": client} if client else {}
        if self.profile:
            options["profile"] = self.profile
        return options


class TrackingConfig(_Frozen):
    """MLflow tracking; ``uri=None`` means ``sqlite:///<cwd>/mlflow.db``."""

    uri: str | None = None
    experiment: str = "lethe"
    model_name: str = "lethe-ensemble"
    alias: str = "production"
    enabled: bool = True
    # Artifact root of the experiment when Lethe creates it (e.g. s3://bucket/mlflow); None =
    # the tracking server's default. Models (with their copied weights) are stored under it.
    artifact_location: str | None = None
    # The tracking server's own database (e.g. sqlite:////srv/mlflow.db). Purging a model
    # version runs `mlflow gc`, which needs direct access to it when `uri` is http(s)://.
    backend_store_uri: str | None = None


class PrivacyConfig(_Frozen):
    """Where the HMAC key for subject digests comes from."""

    subject_key_env: str = "LETHE_SUBJECT_KEY"


class JobConfig(_Frozen):
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
