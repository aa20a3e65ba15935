"""One training epoch and evaluation, over batches sliced from memory or decoded from files."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from quantsearch.data import Batch, ImageSet, PreparedData, batches, split_batch
from quantsearch.device import model_device
from quantsearch.errors import TrainingError


@dataclass(frozen=True)
class EvalResult:
    """Top-1 accuracy (fraction), mean cross-entropy and sample count."""

    top1: float
    loss: float
    n: int


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet | Iterable[Batch], mean: float | None = None,
             std: float | None = None, batch_size: int = 512, device: str | torch.device | None = None
             ) -> EvalResult:
    """Top-1 and mean cross-entropy in eval mode on `device` (default: where the model is).

    `data` is an ImageSet (normalised with `mean`/`std`, in batches of `batch_size`) or any iterable of (x, y)
    batches, e.g. a DataLoader."""
    device = model_device(model) if device is None else device
    if isinstance(data, ImageSet):
        if mean is None or std is None:
            raise TypeError("evaluate on an ImageSet needs its mean and std")
        data = batches(data, batch_size, mean, std)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    for batch in data:
        x, y = split_batch(batch)
        if y is None:
            raise TypeError("evaluate needs labelled batches (x, y)")
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")  # summed on the device: one sync at the end
        correct += (logits.argmax(1) == y).sum()
        n += len(y)
    model.train(was_training)
    return EvalResult(int(correct) / max(n, 1), float(loss_sum) / max(n, 1), n)


def val_top1(model: nn.Module, data: PreparedData) -> float:
    """Top-1 on the val split (where search and calibration measure); NaN when the split is empty."""
    return evaluate(model, data.val, data.mean, data.std).top1 if len(data.val) else float("nan")


def train_epoch(model: nn.Module, data: ImageSet, mean: float, std: float, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None, generator: torch.Generator,
                batch_size: int, augment: bool, hflip: bool, label_smoothing: float = 0.0,
                device: str | torch.device | None = None,
                on_batch: Callable[[int, float], None] | None = None) -> float:
    """Train one epoch with per-batch scheduler steps; return the mean training loss."""
    device = model_device(model) if device is None else device
    model.train()
    total, count = 0.0, 0
    for i, (x, y) in enumerate(batches(data, batch_size, mean, std, shuffle=True, generator=generator,
                                       augment=augment, hflip=hflip)):
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        value = loss.item()  # the one host sync per step this loop already made
        if not math.isfinite(value):  # raised before any checkpoint of this epoch: the last good one is kept
            raise TrainingError(f"the training loss became {value} at step {i + 1} of the epoch; the last good "
                                "checkpoint is kept: lower the learning rate (or check the data), then rerun")
        total += value * len(y)
        count += len(y)
        if on_batch is not None:
            on_batch(i, total / count)
    return total / max(count, 1)
