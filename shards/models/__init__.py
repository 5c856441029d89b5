"""Model families Lethe trains: the protocol, matrix factorisation and an MLP classifier."""

from __future__ import annotations

from orchestrator.config import MFConfig, MLPConfig
from shards.models.mf import MatrixFactorization
from shards.models.mlp import MLPClassifier
from shards.models.protocol import SisaModel

__all__ = ["MLPClassifier", "MatrixFactorization", "SisaModel", "model_for"]


def model_for(config: MFConfig | MLPConfig) -> SisaModel:
    """The model family a config names."""
    if isinstance(config, MFConfig):
        return MatrixFactorization(config)
    return MLPClassifier(config)
