"""The configuration vocabulary one shard needs: its model, training and storage settings.

``expunge.orchestrator.config`` composes these into the job config and re-exports them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

__all__ = [
    "AnyModelConfig",
    "CustomModelConfig",
    "Frozen",
    "ItemStatsConfig",
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
    embedding_dim: StrictInt = Field(16, ge=1, description="Length of the user and item factor vectors.")
    num_items: StrictInt = Field(
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
    num_features: StrictInt = Field(
        8, ge=1, description="Width of the feature vector (rows of another width are refused)."
    )
    num_classes: StrictInt = Field(2, ge=2, description="Number of classes; labels must lie in [0, num_classes).")
    hidden: tuple[int, ...] = Field((32,), description="Widths of the hidden layers, in order.")


class CustomModelConfig(Frozen):
    """Your own model family: ``factory`` is ``"package.module:Name"``, called with ``options``.

    The factory returns an object implementing ``expunge.shards.models.SisaModel``; it must be
    importable wherever shards run (under ``ray job submit --working-dir .`` that is the
    submitted folder).
    """

    kind: Literal["custom"] = Field("custom", description="Selects your own model family.")
    factory: str = Field(
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="`package.module:Name` of a callable returning a `expunge.shards.models.SisaModel`.",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments passed to the factory.")


class ItemStatsConfig(Frozen):
    """Item-item sufficient statistics for ratings: shard states add up to the whole-data model.

    Each shard keeps sums (per item, per co-rated item pair) and its subjects' own ratings;
    the ensemble adds the sums exactly, so S shards predict what one model on all the data
    predicts, bit for bit. Ratings: item-KNN plus a low-rank Gaussian conditional on the
    user's own ratings; top-N: EASE (or EDLAE / DLAE, ``ranker``) on the co-rating counts. See docs/accuracy.md.
    """

    kind: Literal["item_stats"] = Field("item_stats", description="Selects the item-item statistics model.")
    num_items: StrictInt = Field(
        0,
        ge=0,
        description="Size of the item catalogue; item ids must lie in [0, num_items). 0 = infer from the data "
        "at first training and persist it. The state holds num_items x num_items pair sums.",
    )
    item_bias_shrinkage: float = Field(5.0, ge=0.0, description="Ratings-worth of shrinkage of item biases to 0.")
    user_bias_shrinkage: float = Field(10.0, ge=0.0, description="Ratings-worth of shrinkage of user biases to 0.")
    neighbours: StrictInt = Field(50, ge=1, description="Most similar items the user rated that the KNN part averages.")
    similarity_shrinkage: float = Field(
        50.0, ge=0.0, description="Item-item cosine times n/(n + this), n = users who rated both items."
    )
    factors: StrictInt = Field(10, ge=0, description="Rank of the item covariance in the low-rank part; 0 = KNN only.")
    covariance_shrinkage: float = Field(
        100.0, ge=0.0, description="Pair covariance = sum of products / (co-raters + this) before the eigenvectors."
    )
    factor_noise: float = Field(
        2.0, gt=0.0, description="Ridge penalty of a user's latent vector in the low-rank part."
    )
    knn_weight: float = Field(
        0.6,
        ge=0.0,
        le=1.0,
        description="Fixed weight of the KNN part in the rating prediction; the low-rank part gets 1 - this.",
    )
    #: Read only when the summed state is fitted (the stored sums are the same whatever they are), and
    #: added after stores were trained: left out of the fingerprints, so those stores keep their keys.
    FIT_ONLY: ClassVar[frozenset[str]] = frozenset({"ranker", "ranking_dropout", "ranking_dropout_l2"})

    ranking_l2: float = Field(500.0, gt=0.0, description="L2 penalty of the EASE item-item ranking weights (top-N).")
    ranker: Literal["ease", "edlae", "dlae"] = Field(
        "ease",
        description="Top-N weights solved from the co-rating counts: `ease` (Steck 2019), `edlae` (EASE with the "
        "dropout penalty, Steck 2020) or `dlae` (the same without EASE's zero diagonal). Read when the state is "
        "fitted: the stored statistics, and their erasure, are the same for all three.",
    )
    ranking_dropout: float = Field(
        0.6,
        gt=0.0,
        lt=1.0,
        description="Dropout probability p of `edlae` / `dlae`: item i's penalty is p/(1-p) x its raters + "
        "`ranking_dropout_l2`. Unused by `ease`.",
    )
    ranking_dropout_l2: float = Field(
        400.0, gt=0.0, description="L2 penalty added to the dropout penalty of `edlae` / `dlae`. Unused by `ease`."
    )


AnyModelConfig = MFConfig | MLPConfig | ItemStatsConfig | CustomModelConfig
ModelConfig = Annotated[AnyModelConfig, Field(discriminator="kind")]


class TrainingConfig(Frozen):
    """Deterministic slice-by-slice training."""

    model: ModelConfig = Field(MFConfig(), description="The model family, chosen by `kind`.")
    epochs: StrictInt = Field(
        8, ge=1, description="Budget in full-shard epochs; spread over the R slice steps (every step gets >= 1)."
    )
    batch_size: StrictInt = Field(256, ge=1, description="Rows per optimiser step.")
    learning_rate: float = Field(0.01, gt=0.0, description="Optimiser learning rate.")
    weight_decay: float = Field(0.0, ge=0.0, description="Optimiser weight decay.")
    seed: StrictInt = Field(0, description="Seed of initialisation and batch order: training is deterministic.")
    optimizer_kernel: Literal["fused", "per_tensor"] = Field(
        "fused",
        description="How Adam updates the parameters: `fused`, one kernel over every tensor (about 3x less CPU per "
        "step on a shard's many small user tables); `per_tensor`, a loop over the tensors. The two round "
        "differently, so this is part of the training: stores trained before this setting existed read as "
        "`per_tensor` and keep it.",
    )
    threads_per_shard: StrictInt = Field(1, ge=1, description="Torch threads each shard trains with.")
    cpus_per_shard: float = Field(
        1.0,
        ge=0.0,
        description="Ray CPUs reserved per shard actor; lowered automatically if the cluster is smaller. Training from "
        "scratch starts at most one worker process per `cpus_per_shard` CPUs of each node and gives each several shards when "
        'there are more (docs/architecture.md, "The Ray seam").',
    )
    niceness: StrictInt = Field(
        0,
        ge=0,
        le=19,
        description="Scheduling niceness of Expunge's actors (shards and the service). Ray starts workers at 15, "
        "which starves them on a busy machine; Expunge starts its own clusters at 0 and sets this in each actor "
        "(raising priority on a cluster started by others needs CAP_SYS_NICE: a warning says so).",
    )

    def fingerprint(self) -> str:
        """Stable digest of every setting that changes the trained tensors (not where or how fast they run)."""
        # ``per_tensor`` is what every store trained before ``optimizer_kernel`` existed used: leaving it
        # out keeps their fingerprints (and checkpoint keys) as they were.
        ignored = {"cpus_per_shard", "niceness"} | (
            {"optimizer_kernel"} if self.optimizer_kernel == "per_tensor" else set()
        )
        relevant = self.model_dump(mode="json", exclude=ignored)
        relevant["model"] = json.loads(model_fingerprint_json(self.model))
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def model_fingerprint_json(model: AnyModelConfig) -> str:
    """The model settings that change the trained tensors, as JSON (a shard's fingerprint and checkpoint keys)."""
    return model.model_dump_json(exclude=set(getattr(model, "FIT_ONLY", ())))


class StorageConfig(Frozen):
    """Where shard state lives: a local folder, ``file://`` or ``s3://`` URL.

    Credentials never go here: s3fs reads them from the standard AWS environment variables,
    profile files or instance roles. ``endpoint_url`` defaults to ``AWS_ENDPOINT_URL_S3`` /
    ``AWS_ENDPOINT_URL`` when those are set.
    """

    uri: str = Field(
        "./expunge-store",
        description="Local folder, `file://` or `s3://` URL of the store; a relative folder is relative to the folder "
        "the job runs in (not the config file's).",
    )
    endpoint_url: str | None = Field(
        None, description="S3 endpoint for S3-compatible servers; null = AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL."
    )
    region: str | None = Field(None, description="S3 region.")
    profile: str | None = Field(None, description="AWS profile name for credentials.")
    timeout_s: float = Field(
        20.0,
        gt=0.0,
        le=600.0,
        description="S3 connect and read timeout per attempt, in seconds (3 botocore attempts, twice over): a store "
        "call that cannot be made fails within about 10-13 times this, never hangs.",
    )
    lease_ttl_s: float = Field(
        30.0,
        ge=1.0,
        le=3600.0,
        description="Seconds a writer's lease on the store lives without renewal (renewed every quarter of it); "
        "after that another writer may take the store over. A holder on this host that died is taken over at once.",
    )

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
        options["config_kwargs"] = {
            "connect_timeout": self.timeout_s,
            "read_timeout": self.timeout_s,
            "retries": {"max_attempts": 3, "mode": "standard"},
        }
        if self.profile:
            options["profile"] = self.profile
        return options
