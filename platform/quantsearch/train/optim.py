"""Optimizers and per-iteration LR schedules."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def make_optimizer(params: Iterable[Any], name: str, lr: float, weight_decay: float,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; `params` may be parameter groups."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name}")


def make_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int
                   ) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-iteration schedule: one-cycle, cosine to zero, or constant."""
    total_steps = max(total_steps, 1)
    if name == "onecycle" and total_steps < 8:
        # one-cycle needs a step in each phase (torch divides by pct_start * total - 1): tiny runs anneal instead
        name = "cosine"
    if name == "onecycle":
        max_lrs = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=total_steps,
                                                   pct_start=0.25)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ValueError(f"unknown schedule {name}")
