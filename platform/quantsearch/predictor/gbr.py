"""Tree-ensemble baseline for CQAP: sklearn gradient boosting, seeded; saved with skops (no pickle, no code on load)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import GradientBoostingRegressor

from quantsearch._util import atomic_write_bytes
from quantsearch.config import PredictorSpec
from quantsearch.errors import CheckpointError
from quantsearch.predictor.store import first_line, read_meta, write_meta

WEIGHTS = "gbr.skops"
# skops refuses every type it does not know to be safe. sklearn's Tree is the one a GBR needs: its node arrays
# are not bounds-checked, so a forged file could crash predict(); we only load files this class wrote.
TRUSTED = ["sklearn.tree._tree.Tree"]


class GBRPredictor:
    """Gradient-boosted trees on the same features as the MLP: the baseline METHODS.md asks CQAP to beat."""

    kind: ClassVar[str] = "gbr"

    def __init__(self, n_estimators: int = 300, learning_rate: float = 0.05, max_depth: int = 3,
                 subsample: float = 0.8, seed: int = 0) -> None:
        self.n_estimators, self.learning_rate, self.max_depth = n_estimators, learning_rate, max_depth
        self.subsample, self.seed = subsample, seed
        self.model: GradientBoostingRegressor | None = None

    @classmethod
    def for_spec(cls, spec: PredictorSpec, seed: int) -> GBRPredictor:
        """An unfitted GBR; the spec's MLP settings do not apply, so the defaults above are used."""
        return cls(seed=seed)

    def fit(self, X: npt.NDArray[np.float32], y: npt.NDArray[np.float64]) -> GBRPredictor:
        """Fit on (X, y); returns self."""
        self.model = GradientBoostingRegressor(n_estimators=self.n_estimators, learning_rate=self.learning_rate,
                                               max_depth=self.max_depth, subsample=self.subsample,
                                               random_state=self.seed)
        self.model.fit(np.asarray(X, dtype=np.float32), np.asarray(y, dtype=np.float64))
        return self

    def predict(self, X: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Predicted accuracy for each feature row."""
        if self.model is None:
            raise RuntimeError("GBRPredictor.predict before fit")
        return np.asarray(self.model.predict(np.asarray(X, dtype=np.float32)), dtype=np.float64)

    def meta(self) -> dict[str, Any]:
        """Hyper-parameters (JSON)."""
        return {"n_estimators": self.n_estimators, "learning_rate": self.learning_rate,
                "max_depth": self.max_depth, "subsample": self.subsample, "seed": self.seed}

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write gbr.skops then meta.json (with `extra`, e.g. the encoder) into `directory`."""
        import skops.io as sio

        if self.model is None:
            raise RuntimeError("GBRPredictor.save before fit")
        atomic_write_bytes(Path(directory) / WEIGHTS, sio.dumps(self.model))
        write_meta(directory, self.kind, self.meta(), extra)

    @classmethod
    def load(cls, directory: str | Path) -> GBRPredictor:
        """Rebuild from a folder written by save; a file needing any type beyond TRUSTED is refused."""
        import skops.io as sio

        m = read_meta(directory, cls.kind)["model"]
        try:
            model = cls(int(m["n_estimators"]), float(m["learning_rate"]), int(m["max_depth"]),
                        float(m["subsample"]), int(m["seed"]))
            loaded = sio.load(Path(directory) / WEIGHTS, trusted=TRUSTED)
        except Exception as exc:  # skops raises its own types (untrusted type, bad zip) besides OSError/KeyError
            raise CheckpointError(f"{directory}: the GBR predictor does not load ({first_line(exc)}); "
                                  f"refit it") from exc
        if not isinstance(loaded, GradientBoostingRegressor):
            raise CheckpointError(f"{directory}/{WEIGHTS} holds a {type(loaded).__name__}, not a "
                                  f"GradientBoostingRegressor; refit the predictor")
        model.model = loaded
        return model
