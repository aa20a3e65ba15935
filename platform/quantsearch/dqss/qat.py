"""DQSS in QAT mode: weights, candidate scales and alpha/beta learn in ONE forward-backward per step; after the
argmax the fixed strategy is fine-tuned with LSQ.

Loss in both phases: CE on the labels + kd_weight * KL(FP32 logits || quantized logits).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from quantsearch.data import ArrayData, batches
from quantsearch.device import model_device
from quantsearch.dqss.search import Mixer, mixer_params
from quantsearch.train.optim import make_scheduler
from quantsearch.train.qat import split_params


@dataclass(frozen=True)
class PhaseLog:
    """Loss trace (one value per step) and wall time of one training phase."""

    losses: list[float]
    seconds: float


def steps_for(epochs: float, n: int, batch_size: int) -> int:
    """Optimizer steps in `epochs` (fractions allowed) passes over n images."""
    return max(1, round(epochs * -(-n // batch_size)))


def _stream(data: ArrayData, batch_size: int, mean: float, std: float, gen: torch.Generator
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from batches(data, batch_size, mean, std, shuffle=True, generator=gen)


def _distill_ce(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, kd_weight: float) -> torch.Tensor:
    loss = F.cross_entropy(student, y)
    if kd_weight > 0:
        loss = loss + kd_weight * F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher, 1),
                                           reduction="batchmean", log_target=True)
    return loss


def _run(model: nn.Module, teacher: nn.Module, data: ArrayData, mean: float, std: float,
         opt: torch.optim.Optimizer, steps: int, batch_size: int, gen: torch.Generator, kd_weight: float,
         on_step: Callable[[int, float], None] | None) -> PhaseLog:
    sched = make_scheduler(opt, "cosine", steps)
    model.train()
    teacher.eval()
    device = model_device(model)
    losses: list[float] = []
    t0 = time.perf_counter()
    for step, (x, y) in zip(range(steps), _stream(data, batch_size, mean, std, gen), strict=False):
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            t = teacher(x) if kd_weight > 0 else x.new_zeros(())
        loss = _distill_ce(model(x), t, y, kd_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    return PhaseLog(losses, time.perf_counter() - t0)


def _network_weights(model: nn.Module) -> list[nn.Parameter]:
    """Conv/linear weights, biases and BN affine -- not quantizer tables, not the mixers."""
    return [p for n, p in model.named_parameters() if not any(k in n for k in (".aq.", ".wq.", ".mixer."))]


def search_qat(model: nn.Module, teacher: nn.Module, mixers: dict[str, Mixer], data: ArrayData, mean: float,
               std: float, steps: int, lr: float, scale_lr: float, arch_lr: float, batch_size: int,
               gen: torch.Generator, kd_weight: float = 1.0,
               on_step: Callable[[int, float], None] | None = None) -> PhaseLog:
    """One loss, one backward per step; parameter groups: network weights (lr), candidate scales (scale_lr),
    alpha/beta (arch_lr); all cosine-decayed."""
    arch, scales = mixer_params(mixers)
    weights = _network_weights(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in (*weights, *scales, *arch):
        p.requires_grad_(True)
    opt = torch.optim.AdamW([{"params": weights, "lr": lr, "weight_decay": 0.0},
                             {"params": scales, "lr": scale_lr, "weight_decay": 0.0},
                             {"params": arch, "lr": arch_lr, "weight_decay": 0.0}])
    return _run(model, teacher, data, mean, std, opt, steps, batch_size, gen, kd_weight, on_step)


def finetune_fixed(model: nn.Module, teacher: nn.Module, data: ArrayData, mean: float, std: float, steps: int,
                   lr: float, scale_lr: float, batch_size: int, gen: torch.Generator, kd_weight: float = 1.0,
                   on_step: Callable[[int, float], None] | None = None) -> PhaseLog:
    """LSQ fine-tuning of the argmax strategy (mixers detached): weights and the chosen scales/offsets."""
    for p in model.parameters():
        p.requires_grad_(True)
    weights, quant = split_params(model)
    opt = torch.optim.AdamW([{"params": weights, "lr": lr, "weight_decay": 0.0},
                             {"params": quant, "lr": scale_lr, "weight_decay": 0.0}])
    return _run(model, teacher, data, mean, std, opt, steps, batch_size, gen, kd_weight, on_step)
