"""fit_predictor: the CQAP stage's core -- measured table in, fitted predictor and its held-out report out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from quantsearch.config import PredictorSpec
from quantsearch.predictor.dataset import measured_set, split_by_subnet
from quantsearch.predictor.metrics import PredictorReport, score_heldout
from quantsearch.predictor.model import make_model
from quantsearch.predictor.predictor import Predictor
from quantsearch.space.encoding import FeatureEncoder
from quantsearch.space.space import SearchSpace
from quantsearch.space.subnet import SubnetConfig


@dataclass(frozen=True, eq=False)
class FitResult:
    """The fitted predictor (trained on the training split only, so the report describes exactly this model),
    its report, and the held-out subnets with measured and predicted accuracy."""

    predictor: Predictor
    report: PredictorReport
    heldout: tuple[SubnetConfig, ...]
    measured: npt.NDArray[np.float64]
    predicted: npt.NDArray[np.float64]
    bitops: npt.NDArray[np.float64]


def fit_predictor(table: Any, spec: PredictorSpec, space: SearchSpace, seed: int) -> FitResult:
    """Split the measured table by subnet (spec.holdout), fit spec.model on the rest, score the held-out part.

    `table`: a pyarrow Table or row dicts with config, avg_bits, bitops, val_acc; `seed` is used unless
    spec.seed is set. Same table, spec and seed give the same predictor (on the CPU).
    """
    seed = spec.seed if spec.seed is not None else seed
    encoder = FeatureEncoder.for_space(space)
    data = measured_set(table, encoder)
    train_idx, held_idx = split_by_subnet(data.configs, spec.holdout, seed)
    train, held = data.subset(train_idx), data.subset(held_idx)
    start = time.perf_counter()
    model = make_model(spec, seed).fit(train.X, train.y)
    seconds = time.perf_counter() - start
    predicted = model.predict(held.X)
    overall, bands = score_heldout(held.y, predicted, held.bitops, held.avg_bits, spec.bands)
    report = PredictorReport(spec.model, encoder.dim, len(train), len(held), seed, overall, bands, seconds)
    return FitResult(Predictor(encoder, model), report, held.configs, held.y, predicted, held.bitops)
