"""What every predictor model offers (fit / predict / save / load on feature rows) and the models by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from quantsearch.config import PredictorSpec
from quantsearch.errors import CheckpointError, ConfigError
from quantsearch.predictor.gbr import GBRPredictor
from quantsearch.predictor.mlp import MLPPredictor
from quantsearch.predictor.store import read_meta


class PredictorModel(Protocol):
    """A regressor of accuracy on encoded subnets."""

    kind: ClassVar[str]

    def fit(self, X: npt.NDArray[np.float32], y: npt.NDArray[np.float64]) -> PredictorModel:
        """Fit on feature rows X and accuracies y; returns self."""
        ...

    def predict(self, X: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Predicted accuracy per row."""
        ...

    def meta(self) -> dict[str, Any]:
        """JSON hyper-parameters saved in meta.json."""
        ...

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write the model's files and meta.json (with `extra`) into `directory`."""
        ...


MODELS: dict[str, type[MLPPredictor] | type[GBRPredictor]] = {"mlp": MLPPredictor, "gbr": GBRPredictor}


def make_model(spec: PredictorSpec, seed: int) -> PredictorModel:
    """An unfitted model of the spec's kind."""
    if spec.model not in MODELS:
        raise ConfigError(f"unknown predictor model '{spec.model}'; choose from {sorted(MODELS)}")
    return MODELS[spec.model].for_spec(spec, seed)


def load_model(directory: str | Path) -> PredictorModel:
    """Load whichever model a folder holds (its kind is in meta.json)."""
    kind = read_meta(directory).get("kind")
    if kind not in MODELS:
        raise CheckpointError(f"{directory}: unknown predictor kind {kind!r}; refit the predictor")
    return MODELS[str(kind)].load(directory)
