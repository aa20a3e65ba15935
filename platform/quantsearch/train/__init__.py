"""Plain-PyTorch training and evaluation loops and checkpoints (no Ray, no MLflow), and the FP32, LSQ QAT and
PTQ jobs built on them."""

from quantsearch.train.checkpoint import load_checkpoint, save_checkpoint
from quantsearch.train.fit import TrainResult, train_fp32
from quantsearch.train.loop import EvalResult, evaluate, train_epoch, val_top1
from quantsearch.train.ptq import PTQResult, calibrate_ptq
from quantsearch.train.qat import QATResult, train_qat

__all__ = [
    "EvalResult", "PTQResult", "QATResult", "TrainResult", "calibrate_ptq", "evaluate", "load_checkpoint",
    "save_checkpoint", "train_epoch", "train_fp32", "train_qat", "val_top1",
]
