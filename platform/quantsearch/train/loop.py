"""One training epoch and evaluation, over in-memory batches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from quantsearch.data import ArrayData, batches


@dataclass(frozen=True)
class EvalResult:
    """Top-1 accuracy (fraction), mean cross-entropy and sample count."""

    top1: float
    loss: float
    n: int


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayData, mean: float, std: float, batch_size: int = 512,
             device: str | torch.device = "cpu") -> EvalResult:
    """Evaluate in eval mode; returns top-1 and mean CE."""
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for x, y in batches(data, batch_size, mean, std):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    model.train(was_training)
    return EvalResult(correct / max(n, 1), loss_sum / max(n, 1), n)


def train_epoch(model: nn.Module, data: ArrayData, mean: float, std: float, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None, generator: torch.Generator,
                batch_size: int, augment: bool, hflip: bool, label_smoothing: float = 0.0,
                device: str | torch.device = "cpu", on_batch: Callable[[int, float], None] | None = None) -> float:
    """Train one epoch with per-batch scheduler steps; return the mean training loss."""
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
        total += loss.item() * len(y)
        count += len(y)
        if on_batch is not None:
            on_batch(i, total / count)
    return total / max(count, 1)
