"""Typed job configuration: one pydantic model per concern, composed into ``JobConfig``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, StrictInt, ValidationError, model_validator

from expunge.orchestrator.config_hints import config_problems
from expunge.orchestrator.errors import ConfigError
from expunge.shards.config import (
    AnyModelConfig,
    CustomModelConfig,
    Frozen,
    ItemStatsConfig,
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
    "ErasureConfig",
    "EvidenceConfig",
    "IngestConfig",
    "ItemStatsConfig",
    "JobConfig",
    "MFConfig",
    "MLPConfig",
    "ModelConfig",
    "PrivacyConfig",
    "ServiceConfig",
    "ShardingConfig",
    "StorageConfig",
    "SyntheticRatingsConfig",
    "TrackingConfig",
    "TrainingConfig",
    "load_job_config",
]


class SyntheticRatingsConfig(Frozen):
    """Ratings drawn from latent user/item factors; the demo's default data."""

    users: StrictInt = Field(400, ge=2, description="Number of generated users (data subjects).")
    items: StrictInt = Field(200, ge=2, description="Size of the generated item catalogue.")
    ratings_per_user: StrictInt = Field(30, ge=1, description="Distinct items each user rates; at most `items`.")
    latent_dim: StrictInt = Field(
        4, ge=1, description="Dimension of the latent user and item factors behind the ratings."
    )
    noise: float = Field(0.3, ge=0.0, description="Standard deviation of the Gaussian noise added before rounding.")
    seed: StrictInt = Field(0, description="Random seed: the same settings and seed give the same rows.")

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

    source: Literal["synthetic", "movielens", "parquet"] = Field(
        "synthetic",
        description="`synthetic`: generated ratings; `movielens`: a MovieLens ratings file (u.data, RecBole "
        ".inter, ratings.dat or ratings.csv, told apart by its content); `parquet`: any Parquet file.",
    )
    path: str | None = Field(None, description="The data file; required unless `source` is `synthetic`.")
    synthetic: SyntheticRatingsConfig = Field(
        SyntheticRatingsConfig(), description="Settings of the generated ratings (`source: synthetic`)."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Parquet column mapping: canonical name (record_id, subject_id, item_id, rating, label) "
        "-> column in the file.",
    )
    feature_columns: tuple[str, ...] = Field(
        (), description="Parquet columns that form the feature vector of a classifier, in order."
    )
    test_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of rows held out for evaluation, chosen by a keyed hash of each record id, so "
        "erasing a person never moves anyone else's rows between train and test.",
    )
    split_seed: StrictInt = Field(0, description="Key of the train/test split hash; change it for a different split.")
    erased_subjects: Literal["refuse", "drop"] = Field(
        "refuse",
        description="Rows of subjects this store has erased (its tombstones): `refuse` stops training with a "
        "typed error; `drop` leaves those rows out and records how many in the new version.",
    )

    @model_validator(mode="after")
    def _path_when_needed(self) -> DataConfig:
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.source={self.source!r} needs data.path")
        return self


class ShardingConfig(Frozen):
    """How rows are split into shards and slices."""

    shards: StrictInt = Field(4, ge=1, le=4096, description="Number of shards: independent constituent models.")
    slices: StrictInt = Field(
        4, ge=1, le=1024, description="Slices per shard; an erasure retrains a shard from its first affected slice."
    )
    placement: Literal["balanced", "hash", "row"] = Field(
        "balanced",
        description="`balanced`: all rows of a subject in one (shard, slice), greedy by row count, persisted. "
        "`hash`: all rows of a subject in one (shard, slice) chosen by a keyed hash of the subject alone. "
        "`row`: every row placed on its own (for data without subjects).",
    )


class TrackingConfig(Frozen):
    """MLflow tracking; ``uri=None`` means ``sqlite:///<cwd>/mlflow.db``."""

    uri: str | None = Field(None, description="MLflow tracking URI; null means `sqlite:///<cwd>/mlflow.db`.")
    experiment: str = Field("expunge", description="MLflow experiment that holds training and erasure runs.")
    model_name: str = Field("expunge-ensemble", description="Registered model name the ensemble is published under.")
    alias: str = Field("production", description="Registry alias moved to each new version.")
    enabled: bool = Field(True, description="Record runs and model versions in MLflow.")
    charts: bool = Field(
        False,
        description="Attach a per-shard retrain-time chart (PNG) to each erasure run. Off by default: drawing it "
        "costs about 2 s of CPU per erasure (matplotlib); `expunge demo` turns it on.",
    )
    artifact_location: str | None = Field(
        None,
        description="Artifact root of the experiment when Expunge creates it (e.g. s3://bucket/mlflow); null = "
        "the tracking server's default. Models (with their copied weights) are stored under it.",
    )
    backend_store_uri: str | None = Field(
        None,
        description="The tracking server's own database (e.g. sqlite:////srv/mlflow.db). Purging a model "
        "version removes its LoggedModel record for good (as `mlflow gc` does), which needs direct access to "
        "this database when `uri` is http(s)://.",
    )
    take_over_from: str | None = Field(
        None,
        description="The place of a store this one replaces, as a refusal names it (e.g. `/data/expunge-store` on "
        "the old host), when that place cannot be seen from here: another host's folder, or an S3 endpoint that "
        "does not answer. The registry alias serving that store's versions then moves to this store's, but only "
        "if this store published the version it serves. A place this host can see is never taken over while it "
        "holds an ensemble, named or not; a store moved on this host, where the old place is visibly empty, needs "
        "nothing.",
    )


class PrivacyConfig(Frozen):
    """Where the HMAC key for subject digests comes from."""

    subject_key_env: str = Field(
        "EXPUNGE_SUBJECT_KEY",
        description="Environment variable holding the HMAC key for subject digests; keep the key stable.",
    )
    subject_key_file: str | None = Field(
        None,
        description="File holding the key (e.g. a mounted Kubernetes Secret), read when subject_key_env is not set; "
        "one trailing newline is ignored. `expunge serve` sets it for the service it starts (docs/security.md).",
    )


class ServiceConfig(Frozen):
    """The long-lived erasure service (``expunge serve``): names, coalescing window, limits."""

    namespace: str = Field(
        "expunge", min_length=1, description="Ray namespace of the service's named actors; SDK clients connect to it."
    )
    name: str = Field("expunge-coordinator", min_length=1, description="Name of the detached coordinator actor.")
    window_ms: float = Field(
        10.0,
        ge=0.0,
        le=60_000.0,
        description="Coalescing window in milliseconds: requests that arrive within it of the first waiting one "
        "share one retrain per affected shard, from its earliest affected slice (requests that arrive while a "
        "commit runs share the next one whatever the window).",
    )
    pipeline: bool = Field(
        True,
        description="For a model served from summed statistics (item_stats): right after each commit's publish, "
        "start retraining the next queued batch while that commit is purged and sealed (receipts stay in commit "
        "order). False: each batch waits until the one before is answered.",
    )
    switch_interval_ms: float = Field(
        0.5,
        gt=0.0,
        le=100.0,
        description="Python's thread switch interval in the service's process, in milliseconds (Python's own "
        "default is 5): the commit worker, the registration and journal threads and the ready solve share one "
        "GIL, and each thread that waits on a file or MLflow write waits up to this long to run again.",
    )
    ready_niceness: StrictInt = Field(
        -10,
        ge=-20,
        le=19,
        description="Scheduling niceness of the ready solve's thread (item_stats): below the service's own, it is "
        "not preempted by the commit path and the shard actors, and a commit is ready to serve sooner (about 13% "
        "on two cores, docs/performance.md). A niceness below the process's needs CAP_SYS_NICE (root, or setcap "
        "on the interpreter); without it the thread keeps the process's niceness and an INFO line says so.",
    )
    max_subjects_per_request: StrictInt = Field(
        1000, ge=1, description="Largest number of subjects one request may name; larger requests are refused."
    )
    max_subjects_per_batch: StrictInt = Field(
        10_000, ge=1, description="Largest number of subjects coalesced into one retrain."
    )
    register_within_s: float = Field(
        2.0,
        ge=0.0,
        description="While requests keep arriving, committed erasures are registered in MLflow (new version, "
        "earlier versions purged) at least this often, in seconds; when idle, at once. A registration round "
        "may take longer than this when the CPUs are saturated (see registration_nice_increment).",
    )
    registration_nice_increment: StrictInt = Field(
        19,
        ge=0,
        le=19,
        description="How much nicer (lower CPU priority) than the service's other threads its registration thread "
        "runs (Linux; 0: the same). MLflow bookkeeping then gives way to commits and ready solves on a busy "
        "machine and catches up when they pause: under a saturating stream registration trails by seconds, and "
        "the older MLflow versions it purges (erased subjects' weights) stay that much longer. Capped at niceness "
        "19: on workers already at 15 it is at most 4 nicer.",
    )
    shard_restarts: StrictInt = Field(
        -1, ge=-1, description="How often Ray restarts a dead shard actor (-1: always); it reloads from the store."
    )
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the HTTP API (and the Ray head that `serve` starts) listens on: loopback by default. "
        "Only an explicit setting exposes it (0.0.0.0: every interface); then give tls_cert/tls_key, or keep "
        "loopback behind a TLS-terminating proxy (a warning is logged when exposed without TLS).",
    )
    port: StrictInt = Field(8470, ge=0, le=65535, description="TCP port of the HTTP API (0: none; the API is off).")
    tls_cert: str | None = Field(None, description="PEM certificate file: the HTTP API serves HTTPS (with tls_key).")
    tls_key: str | None = Field(None, description="PEM private key file of tls_cert.")
    public_url: str | None = Field(
        None,
        description="The API's URL as callers reach it (e.g. https://expunge.example.com behind a TLS proxy), used "
        "in status and evidence links; default the address it listens on. Never taken from a request's Host header.",
    )
    token_cache_s: float = Field(
        1.0,
        ge=0.0,
        le=60.0,
        description="How long a verified API token is trusted before the store is read again, in seconds: a "
        "revoked token stops working within this time.",
    )
    due_days_warning: StrictInt = Field(
        7, ge=0, description="A pending request due within this many days is logged as a warning (late ones always)."
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> ServiceConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("service.tls_cert and service.tls_key go together: give both (HTTPS) or neither")
        return self


class EvidenceConfig(Frozen):
    """Evidence beyond the store: where the receipt log is anchored, and the membership audit of erasures."""

    anchor_uri: str | None = Field(
        None,
        description="`s3://bucket/prefix` of a bucket with S3 Object Lock where each chained receipt's hash is "
        "also written, locked in compliance mode, so a writer of the store cannot reseal the receipt log alone "
        "(docs/verification.md); null: only the MLflow runs anchor it.",
    )
    anchor_retention_days: StrictInt = Field(
        2557,
        ge=1,
        le=36500,
        description="Days each anchor object stays locked (compliance mode: nobody can delete or overwrite it "
        "before then); default about 7 years.",
    )
    audit_holdout: str | None = Field(
        None,
        description="Held-out rows no version was trained on (a Parquet file or folder, or a MovieLens file), "
        "the non-members of the membership-inference audit; when set, every erasure is audited at erasure time "
        "(docs/verification.md gives its cost).",
    )
    audit_fpr: float = Field(
        0.01, gt=0.0, lt=1.0, description="False-positive rate at which the audit reports the attack's TPR."
    )


class IngestConfig(Frozen):
    """How ``expunge ingest`` adds new rows to a trained store (docs/ingest.md)."""

    tail_epochs: StrictInt = Field(
        2,
        ge=1,
        description="Epochs of the step that trains an ingested tail slice, on its own rows only, from the previous "
        "checkpoint (gradient models; recorded per slice, so changing it later changes nothing trained).",
    )
    max_tail_slices: StrictInt = Field(
        24,
        ge=1,
        description="Most ingested tail slices a shard keeps; one more and its tail slices are merged into one "
        "(compaction: that shard retrains from its first tail slice).",
    )
    max_subject_slices: StrictInt = Field(
        12,
        ge=2,
        description="Most slices one subject's rows may span in a shard; one more and the shard's tail slices are "
        "merged into one (an erasure retrains from the subject's first slice).",
    )


class ErasureConfig(Frozen):
    """How a ``forget`` or ``ingest`` job runs its shard retrains (docs/performance.md, "Cold CLI erasure")."""

    in_process_max_shards: StrictInt = Field(
        8,
        ge=0,
        strict=True,  # `true` is not a shard count (lax mode would read it as 1)
        description="A `forget` or `ingest` job with no Ray cluster to join (RAY_ADDRESS unset) that retrains at most this many "
        "shards, within `in_process_max_cpu_s`, retrains them in its own process, one after another, and never "
        "starts Ray (a private cluster costs 5-13 s to start on two cores, and each shard actor about 1.3 s); the "
        "bits are the same. 0: always start Ray. A job on a cluster (RAY_ADDRESS), an audited erasure "
        "(evidence.audit_holdout) and the service always use Ray actors.",
    )
    in_process_max_cpu_s: float = Field(
        10.0,
        ge=0.0,
        description="...and when those shards' from-scratch training took at most this many CPU seconds together "
        "(the store's last training, per shard: the most an erasure retrains), so that retraining them one after "
        "another costs less than starting Ray; larger retrains start Ray and run in parallel actors.",
    )


class JobConfig(Frozen):
    """One job: data, sharding, training, storage, tracking, privacy, service, evidence, ingest and erasure settings."""

    data: DataConfig = Field(DataConfig(), description="Where the training rows come from.")
    sharding: ShardingConfig = Field(ShardingConfig(), description="How rows are split into shards and slices.")
    training: TrainingConfig = Field(TrainingConfig(), description="Model and training loop settings.")
    storage: StorageConfig = Field(StorageConfig(), description="Where shard state lives.")
    tracking: TrackingConfig = Field(TrackingConfig(), description="MLflow tracking and model registry.")
    privacy: PrivacyConfig = Field(PrivacyConfig(), description="Where the subject digest key comes from.")
    service: ServiceConfig = Field(ServiceConfig(), description="The long-lived erasure service (`expunge serve`).")
    evidence: EvidenceConfig = Field(
        EvidenceConfig(), description="Anchors of the receipt log outside the store, and the erasure audit."
    )
    ingest: IngestConfig = Field(IngestConfig(), description="How new rows are added to a trained store.")
    erasure: ErasureConfig = Field(
        ErasureConfig(), description="How a `forget` or `ingest` job runs its shard retrains."
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML would keep the last one)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[object, object]:
    seen: dict[object, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # an unhashable key: the mapping constructor below says so
            continue
        if first != key_node.start_mark.line + 1:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"the key {key!r} is given twice (lines {first} and {key_node.start_mark.line + 1}); keep one",
                key_node.start_mark,
            )
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_job_config(path: str | Path) -> JobConfig:
    """Load a YAML job config; every validation problem is listed in one ``ConfigError``."""
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"config file {str(file)!r} is a folder; pass --config PATH.yaml")
    if not file.is_file():
        raise ConfigError(f"config file {str(file)!r} does not exist; pass --config PATH.yaml")
    try:
        raw = yaml.load(file.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}  # a SafeLoader
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(file)!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(file)!r} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file {str(file)!r} holds a {type(raw).__name__}, not sections: start it with a key such as "
            "'sharding:' (docs/configuration.md)"
        )
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as exc:
        problems = config_problems(JobConfig, exc.errors())
        listed = f" {problems[0]}" if len(problems) == 1 else "".join(f"\n  - {p}" for p in problems)
        raise ConfigError(f"config file {str(file)!r} is invalid:{listed}") from exc
