"""Model families Expunge trains: the protocols, matrix factorisation, an MLP classifier, item-item statistics."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from types import ModuleType

from expunge.shards.config import AnyModelConfig, CustomModelConfig, ItemStatsConfig, MFConfig
from expunge.shards.errors import ConfigError, ModelImportError
from expunge.shards.models.item_stats import ItemStatsModel
from expunge.shards.models.mf import MatrixFactorization
from expunge.shards.models.mlp import MLPClassifier
from expunge.shards.models.protocol import (
    DecrementalStatisticsModel,
    SisaModel,
    StatisticsFit,
    SubjectStatisticsModel,
    SufficientStatisticsModel,
)

__all__ = [
    "AnyModel",
    "DecrementalStatisticsModel",
    "ItemStatsModel",
    "MLPClassifier",
    "MatrixFactorization",
    "SisaModel",
    "StatisticsFit",
    "SubjectStatisticsModel",
    "SufficientStatisticsModel",
    "factory_module",
    "model_for",
    "task_of",
]

log = logging.getLogger(__name__)

#: A model family of either kind: trained by gradient steps, or summed from sufficient statistics.
AnyModel = SisaModel | SufficientStatisticsModel


def factory_module(config: CustomModelConfig) -> ModuleType:
    """Import the module of a custom model's factory: from the import path, else from the current folder.

    The current folder is tried last (as ``python -m`` puts it first): the ``expunge`` program's
    own import path does not hold it, so ``expunge train`` run beside ``my_models.py`` would not
    find the module otherwise. Ray gives its workers the driver's current folder on their path.

    Raises:
        ModelImportError: the module (or a module it imports) is not found; names it and the fix.
        ConfigError: importing the module raised an error of its own (its code is named).
    """
    module_name = config.factory.partition(":")[0]
    try:
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError:
            here = os.getcwd()
            if here in sys.path or "" in sys.path:
                raise
            sys.path.append(here)
            log.debug("looking for %s in the current folder %s", module_name, here)
            return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModelImportError(config.factory, module_name, str(exc)) from exc
    except Exception as exc:  # the user's module raised while importing: their code, not a bug of Expunge
        raise ConfigError(
            f"training.model.factory {config.factory!r}: importing {module_name!r} raised "
            f"{type(exc).__name__}: {exc}; fix the module and run the command again"
        ) from exc


def _custom(config: CustomModelConfig) -> AnyModel:
    attribute = config.factory.partition(":")[2]
    module = factory_module(config)
    factory = getattr(module, attribute, None)
    if factory is None:
        raise ConfigError(
            f"training.model.factory {config.factory!r}: the module {module.__name__!r} ({module.__file__}) "
            f"defines no {attribute!r}; name a callable it defines"
        )
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
