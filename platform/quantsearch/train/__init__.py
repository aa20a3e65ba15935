"""Plain-PyTorch training and evaluation loops and checkpoints (no Ray, no MLflow)."""

from quantsearch.train.checkpoint import load_checkpoint, save_checkpoint
from quantsearch.train.fit import TrainResult, build_model_from_checkpoint, train_fp32
from quantsearch.train.loop import EvalResult, evaluate, train_epoch
from quantsearch.train.qat import QATResult, load_model, train_qat

__all__ = [
    "EvalResult",
    "QATResult",
    "load_model",
    "train_qat",
    "TrainResult",
    "build_model_from_checkpoint",
    "evaluate",
    "load_checkpoint",
    "save_checkpoint",
    "train_epoch",
    "train_fp32",
]
