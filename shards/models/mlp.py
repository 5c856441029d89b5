"""MLP classifier over a fixed-width feature vector (tabular data)."""

from __future__ import annotations

import itertools
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from expunge.shards.config import MLPConfig
from expunge.shards.rows import FEATURES, LABEL, numeric_values

__all__ = ["MLPClassifier"]


class MLPClassifier:
    """Fixed architecture: grow/layout/rebuild are trivial (see ``SisaModel``)."""

    task: Literal["rating", "classification"] = "classification"
    subject_specific = False

    def __init__(self, config: MLPConfig) -> None:
        self.config = config

    def _module(self) -> nn.Module:
        widths = [self.config.num_features, *self.config.hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(widths):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], self.config.num_classes))
        return nn.Sequential(*layers)

    def build(self, generator: torch.Generator) -> nn.Module:
        module = self._module()
        with torch.no_grad():
            for param in module.parameters():
                bound = 1.0 / max(1, param.shape[-1]) ** 0.5
                param.uniform_(-bound, bound, generator=generator)
        return module

    def grow(self, module: nn.Module, slice_rows: pa.Table, generator: torch.Generator) -> None:
        return None

    def layout(self, module: nn.Module) -> dict[str, Any]:
        return {}

    def rebuild(self, layout: dict[str, Any]) -> nn.Module:
        return self._module()

    def encode(self, module: nn.Module, rows: pa.Table) -> dict[str, torch.Tensor]:
        column = rows.column(FEATURES).combine_chunks()
        flat = numeric_values(column.values, np.float32)
        features = torch.from_numpy(flat.reshape(len(rows), -1).copy())
        if features.shape[1] != self.config.num_features:
            raise ValueError(
                f"rows have {features.shape[1]} features, the model expects "
                f"{self.config.num_features}; set training.model.num_features"
            )
        batch = {"features": features}
        if LABEL in rows.column_names:
            batch["target"] = torch.from_numpy(numeric_values(rows.column(LABEL), np.int64))
        return batch

    def loss(self, module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(module(batch["features"]), batch["target"])

    def predict(self, module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.softmax(module(batch["features"]), dim=1)

    def knows(self, module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.ones(batch["features"].shape[0], dtype=torch.bool)
