"""Predictor = feature encoder + fitted model: subnet configs in, predicted accuracy out (the search's fitness)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from quantsearch.errors import CheckpointError, ConfigError
from quantsearch.predictor.model import PredictorModel, load_model
from quantsearch.predictor.store import first_line, read_meta
from quantsearch.space.encoding import FeatureEncoder
from quantsearch.space.subnet import SubnetConfig


@dataclass(frozen=True)
class Predictor:
    """A fitted CQAP: `predict(configs)` gives each subnet's predicted accuracy (fraction 0..1)."""

    encoder: FeatureEncoder
    model: PredictorModel

    @property
    def kind(self) -> str:
        """The model's kind ('mlp' or 'gbr')."""
        return self.model.kind

    def predict(self, configs: Sequence[SubnetConfig]) -> npt.NDArray[np.float64]:
        """Predicted accuracy of each config; ConfigError for a config of another search space."""
        if len(configs) == 0:
            return np.zeros(0, dtype=np.float64)
        return self.model.predict(self.encoder.encode(configs))

    def save(self, directory: str | Path) -> None:
        """Write the model's files and meta.json (with the encoder) into `directory`."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.model.save(directory, extra={"encoder": self.encoder.to_dict()})

    @classmethod
    def load(cls, directory: str | Path) -> Predictor:
        """Rebuild a saved predictor (encoder from meta.json, model from its own file)."""
        meta = read_meta(directory)
        try:
            encoder = FeatureEncoder.from_dict(meta["encoder"])
        except (KeyError, ConfigError) as exc:
            raise CheckpointError(f"{directory}: no valid feature encoder in meta.json ({first_line(exc)}); "
                                  f"refit the predictor") from exc
        in_dim = meta.get("model", {}).get("in_dim", encoder.dim)
        if in_dim != encoder.dim:
            raise CheckpointError(f"{directory}: the model reads {in_dim} features, its encoder writes {encoder.dim}; "
                                  f"refit the predictor")
        return cls(encoder, load_model(directory))
