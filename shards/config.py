"""The configuration vocabulary one shard needs: its model, training and storage settings.

``orchestrator.config`` composes these into the job config and re-exports them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AnyModelConfig",
    "CustomModelConfig",
    "Frozen",
    "MFConfig",
    "MLPConfig",
    "ModelConfig",
    "StorageConfig",
    "TrainingConfig",
]


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MFConfig(Frozen):
    """Biased matrix factorisation for ratings (the recommender case)."""

    kind: Literal["mf"] = Field("mf", description="Selects matrix factorisation.")
    embedding_dim: int = Field(16, ge=1, description="Length of the user and item factor vectors.")
    num_items: int = Field(
        0,
        ge=0,
        description="Size of the item catalogue; item ids must lie in [0, num_items). 0 = infer from the data "
        "at first training and persist it (items are catalogue data, not personal data).",
    )
    init_std: float = Field(0.05, gt=0.0, description="Standard deviation of the initial factors.")
    l2: float = Field(
        0.1,
        ge=0.0,
        description="L2 penalty on the factors and biases a batch touches (per occurrence, as in Funk SVD).",
    )


class MLPConfig(Frozen):
    """Multi-layer perceptron classifier over a fixed-width feature vector."""

    kind: Literal["mlp"] = Field("mlp", description="Selects the MLP classifier.")
    num_features: int = Field(8, ge=1, description="Width of the feature vector (rows of another width are refused).")
    num_classes: int = Field(2, ge=2, description="Number of classes; labels must lie in [0, num_classes).")
    hidden: tuple[int, ...] = Field((32,), description="Widths of the hidden layers, in order.")


class CustomModelConfig(Frozen):
    """Your own model family: ``factory`` is ``"package.module:Name"``, called with ``options``.

    The factory returns an object implementing ``shards.models.SisaModel``; it must be
    importable wherever shards run (under ``ray job submit --working-dir .`` that is the
    submitted folder).
    """

    kind: Literal["custom"] = Field("custom", description="Selects your own model family.")
    factory: str = Field(
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="`package.module:Name` of a callable returning a `shards.models.SisaModel`.",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments passed to the factory.")


AnyModelConfig = MFConfig | MLPConfig | CustomModelConfig
ModelConfig = Annotated[AnyModelConfig, Field(discriminator="kind")]


class TrainingConfig(Frozen):
    """Deterministic slice-by-slice training."""

    model: ModelConfig = Field(MFConfig(), description="The model family, chosen by `kind`.")
    epochs: int = Field(
        8, ge=1, description="Budget in full-shard epochs; spread over the R slice steps (every step gets >= 1)."
    )
    batch_size: int = Field(256, ge=1, description="Rows per optimiser step.")
    learning_rate: float = Field(0.01, gt=0.0, description="Optimiser learning rate.")
    weight_decay: float = Field(0.0, ge=0.0, description="Optimiser weight decay.")
    seed: int = Field(0, description="Seed of initialisation and batch order: training is deterministic.")
    threads_per_shard: int = Field(1, ge=1, description="Torch threads each shard trains with.")
    cpus_per_shard: float = Field(
        1.0, ge=0.0, description="Ray CPUs reserved per shard actor; lowered automatically if the cluster is smaller."
    )

    def fingerprint(self) -> str:
        """Stable digest of every setting that changes the trained tensors."""
        relevant = self.model_dump(mode="json", exclude={"cpus_per_shard"})
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


class StorageConfig(Frozen):
    """Where shard state lives: a local folder, ``file://`` or ``s3://`` URL.

    Credentials never go here: s3fs reads them from the standard AWS environment variables,
    profile files or instance roles. ``endpoint_url`` defaults to ``AWS_ENDPOINT_URL_S3`` /
    ``AWS_ENDPOINT_URL`` when those are set.
    """

    uri: str = Field("./expunge-store", description="Local folder, `file://` or `s3://` URL of the store.")
    endpoint_url: str | None = Field(
        None, description="S3 endpoint for S3-compatible servers; null = AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL."
    )
    region: str | None = Field(None, description="S3 region.")
    profile: str | None = Field(None, description="AWS profile name for credentials.")

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
