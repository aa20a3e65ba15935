"""How well a predictor ranks held-out subnets: Kendall tau, Spearman rho, RMSE, overall and within BitOps bands,
next to the trivial proxies (more bits / more BitOps = more accurate) it has to beat to be worth a search."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

Floats = npt.NDArray[np.float64]


def _defined(a: Floats, b: Floats) -> bool:
    """Rank correlation needs two points and variation on both sides."""
    return len(a) >= 2 and bool(np.ptp(a) > 0) and bool(np.ptp(b) > 0)


def kendall_tau(measured: Floats, predicted: Floats) -> float:
    """Kendall's tau-b (scipy); NaN when undefined (fewer than 2 points or a constant side)."""
    if not _defined(np.asarray(measured), np.asarray(predicted)):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.kendalltau(measured, predicted).statistic)


def spearman_rho(measured: Floats, predicted: Floats) -> float:
    """Spearman's rho (scipy); NaN when undefined."""
    if not _defined(np.asarray(measured), np.asarray(predicted)):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(measured, predicted).statistic)


def rmse(measured: Floats, predicted: Floats) -> float:
    """Root mean squared error; NaN on no points."""
    if len(measured) == 0:
        return math.nan
    return float(np.sqrt(np.mean((np.asarray(measured) - np.asarray(predicted)) ** 2)))


def bitops_bands(bitops: Floats, bands: int) -> npt.NDArray[np.int64]:
    """Band index 0..bands-1 of each row: BitOps quantile bands (ties share a band, so a band may be empty)."""
    b = np.asarray(bitops, dtype=np.float64)
    if bands <= 1 or len(b) == 0:
        return np.zeros(len(b), dtype=np.int64)
    inner = np.quantile(b, np.linspace(0, 1, bands + 1)[1:-1])
    return np.asarray(np.searchsorted(inner, b, side="right"), dtype=np.int64)


@dataclass(frozen=True)
class RankScores:
    """Scores on one set of held-out subnets (all of them, or one BitOps band)."""

    n: int
    bitops_lo: float
    bitops_hi: float
    tau: float
    rho: float
    rmse: float
    # the proxies rank by cost alone: within a band of similar BitOps they are what the predictor must beat
    tau_avg_bits: float
    rho_avg_bits: float
    tau_bitops: float
    rho_bitops: float


def rank_scores(measured: Floats, predicted: Floats, bitops: Floats, avg_bits: Floats) -> RankScores:
    """Predictor and proxy scores on one set of subnets."""
    return RankScores(len(measured), float(np.min(bitops)) if len(bitops) else math.nan,
                      float(np.max(bitops)) if len(bitops) else math.nan,
                      kendall_tau(measured, predicted), spearman_rho(measured, predicted), rmse(measured, predicted),
                      kendall_tau(measured, avg_bits), spearman_rho(measured, avg_bits),
                      kendall_tau(measured, bitops), spearman_rho(measured, bitops))


def _json(value: Any) -> Any:
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


@dataclass(frozen=True)
class PredictorReport:
    """Held-out quality of a fitted predictor: overall and per BitOps band, with the cost proxies beside."""

    model: str
    features: int
    n_train: int
    n_heldout: int
    seed: int
    overall: RankScores
    bands: tuple[RankScores, ...]
    fit_seconds: float

    @property
    def band_tau(self) -> float:
        """Mean tau over the bands where it is defined (NaN if none)."""
        taus = [b.tau for b in self.bands if math.isfinite(b.tau)]
        return float(np.mean(taus)) if taus else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (NaN as null), with band_tau."""
        out: dict[str, Any] = _json(asdict(self))
        out["band_tau"] = _json(self.band_tau)
        return out


def score_heldout(measured: Floats, predicted: Floats, bitops: Floats, avg_bits: Floats, bands: int
                  ) -> tuple[RankScores, tuple[RankScores, ...]]:
    """(overall scores, scores of each non-empty BitOps band in ascending cost)."""
    overall = rank_scores(measured, predicted, bitops, avg_bits)
    idx = bitops_bands(bitops, bands)
    per_band = tuple(rank_scores(measured[idx == k], predicted[idx == k], bitops[idx == k], avg_bits[idx == k])
                     for k in range(max(bands, 1)) if np.any(idx == k))
    return overall, per_band
