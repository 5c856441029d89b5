"""The MLflow pyfunc wrapper of an exported ensemble, logged as "models from code" (this file is the model)."""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc.model import PythonModel, PythonModelContext

from expunge.orchestrator.serving.servable import ENSEMBLE_ARTIFACT, EnsemblePredictor, rows_from_frame

__all__ = ["ExpungeEnsembleModel"]


class ExpungeEnsembleModel(PythonModel):
    """Loads the copied constituents once; ``predict`` takes subject digests (or raw ids with the key) and items."""

    def __init__(self) -> None:
        self._predictor: EnsemblePredictor | None = None

    def load_context(self, context: PythonModelContext) -> None:
        self._predictor = EnsemblePredictor.load(context.artifacts[ENSEMBLE_ARTIFACT])

    def predict(
        self, context: PythonModelContext | None, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        if self._predictor is None:
            raise RuntimeError("load the model with mlflow.pyfunc.load_model; load_context was not called")
        return self._predictor.predict(rows_from_frame(model_input, self._predictor.manifest))


mlflow.models.set_model(ExpungeEnsembleModel())
