"""Model families Expunge trains: the protocol, matrix factorisation and an MLP classifier."""

from __future__ import annotations

import importlib

from shards.config import AnyModelConfig, CustomModelConfig, MFConfig
from shards.errors import ConfigError
from shards.models.mf import MatrixFactorization
from shards.models.mlp import MLPClassifier
from shards.models.protocol import SisaModel

__all__ = ["MLPClassifier", "MatrixFactorization", "SisaModel", "model_for", "task_of"]


def _custom(config: CustomModelConfig) -> SisaModel:
    module_name, _, attribute = config.factory.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"training.model.factory {config.factory!r} cannot be imported ({exc}); make the module "
            "importable (installed, or inside the folder given to `ray job submit --working-dir`)"
        ) from exc
    model = factory(**config.options)
    if not isinstance(model, SisaModel):
        raise ConfigError(f"{config.factory!r} returned {type(model).__name__}, which does not implement SisaModel")
    return model


def model_for(config: AnyModelConfig) -> SisaModel:
    """The model family a config names."""
    if isinstance(config, MFConfig):
        return MatrixFactorization(config)
    if isinstance(config, CustomModelConfig):
        return _custom(config)
    return MLPClassifier(config)


def task_of(config: AnyModelConfig) -> str:
    """``rating`` or ``classification``: which canonical target columns the rows need."""
    if isinstance(config, MFConfig):
        return "rating"  # known before num_items is resolved from the data
    return model_for(config).task
