"""CQAP: the accuracy predictor fitted on measured subnets (dataset, MLP and GBR models, rank metrics, fit)."""

from quantsearch.predictor.dataset import MeasuredSet, measured_set, min_subnets, split_by_subnet, table_columns
from quantsearch.predictor.fit import FitResult, fit_predictor
from quantsearch.predictor.gbr import GBRPredictor
from quantsearch.predictor.metrics import (
    PredictorReport,
    RankScores,
    bitops_bands,
    kendall_tau,
    rank_scores,
    rmse,
    score_heldout,
    spearman_rho,
)
from quantsearch.predictor.mlp import MLPPredictor
from quantsearch.predictor.model import MODELS, PredictorModel, load_model, make_model
from quantsearch.predictor.plot import scatter_png
from quantsearch.predictor.predictor import Predictor

__all__ = [
    "MODELS", "FitResult", "GBRPredictor", "MLPPredictor", "MeasuredSet", "Predictor", "PredictorModel",
    "PredictorReport", "RankScores", "bitops_bands", "fit_predictor", "kendall_tau", "load_model", "make_model",
    "measured_set", "min_subnets", "rank_scores", "rmse", "scatter_png", "score_heldout", "spearman_rho",
    "split_by_subnet", "table_columns",
]
