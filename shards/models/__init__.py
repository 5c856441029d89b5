"""Model families Expunge trains: the protocols, matrix factorisation, an MLP classifier, item-item statistics."""

from __future__ import annotations

import importlib

from expunge.shards.config import AnyModelConfig, CustomModelConfig, ItemStatsConfig, MFConfig
from expunge.shards.errors import ConfigError
from expunge.shards.models.item_stats import ItemStatsModel
from expunge.shards.models.mf import MatrixFactorization
from expunge.shards.models.mlp import MLPClassifier
from expunge.shards.models.protocol import SisaModel, StatisticsFit, SufficientStatisticsModel

__all__ = [
    "AnyModel",
    "ItemStatsModel",
    "MLPClassifier",
    "MatrixFactorization",
    "SisaModel",
    "StatisticsFit",
    "SufficientStatisticsModel",
    "model_for",
    "task_of",
]

#: A model family of either kind: trained by gradient steps, or summed from sufficient statistics.
AnyModel = SisaModel | SufficientStatisticsModel


def _custom(config: CustomModelConfig) -> AnyModel:
    module_name, _, attribute = config.factory.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"training.model.factory {config.factory!r} cannot be imported ({exc}); make the module "
            "importable (installed, or inside the folder given to `ray job submit --working-dir`)"
        ) from exc
    model = factory(**config.options)
    if not isinstance(model, SisaModel | SufficientStatisticsModel):
        raise ConfigError(
            f"{config.factory!r} returned {type(model).__name__}, which implements neither SisaModel nor "
            "SufficientStatisticsModel"
        )
    return model


def model_for(config: AnyModelConfig) -> AnyModel:
    """The model family a config names."""
    if isinstance(config, MFConfig):
        return MatrixFactorization(config)
    if isinstance(config, ItemStatsConfig):
        return ItemStatsModel(config)
    if isinstance(config, CustomModelConfig):
        return _custom(config)
    return MLPClassifier(config)


def task_of(config: AnyModelConfig) -> str:
    """``rating`` or ``classification``: which canonical target columns the rows need."""
    if isinstance(config, MFConfig | ItemStatsConfig):
        return "rating"  # known before num_items is resolved from the data
    return model_for(config).task
