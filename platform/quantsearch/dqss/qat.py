"""DQSS in QAT mode: weights, candidate scales and alpha/beta learn in ONE forward-backward per step; after the
argmax the fixed strategy is fine-tuned with LSQ.

Loss in both phases: CE on the labels + kd_weight * KL(FP32 logits || quantized logits).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from quantsearch.data.loader import Batch, split_batch
from quantsearch.device import model_device
from quantsearch.dqss.mixers import Anneal, Mixer, mixer_params
from quantsearch.errors import ConfigError
from quantsearch.quant.convert import split_params
from quantsearch.train.compiling import maybe_compile
from quantsearch.train.optim import make_scheduler


@dataclass(frozen=True)
class PhaseLog:
    """Loss trace (one value per step) and wall time of one training phase."""

    losses: list[float]
    seconds: float


def steps_for(epochs: float, batches: Iterable[Batch]) -> int:
    """Optimizer steps in `epochs` (fractions allowed) passes over `batches` (its len(), else one pass counted)."""
    try:
        per_epoch = len(batches)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = sum(1 for _ in batches)
    return max(1, round(epochs * per_epoch))


def _cycle(batches: Iterable[Batch]) -> Iterator[Batch]:
    """Pass after pass over `batches` (each pass a new iter(): a shuffling loader reshuffles)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ConfigError("DQSS got no batches; pass a non-empty iterable of (x, y) batches")


def _distill_ce(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, kd_weight: float) -> torch.Tensor:
    loss = F.cross_entropy(student, y)
    if kd_weight > 0:
        loss = loss + kd_weight * F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher, 1),
                                           reduction="batchmean", log_target=True)
    return loss


def _run(model: nn.Module, teacher: nn.Module, batches: Iterable[Batch], opt: torch.optim.Optimizer, steps: int,
         kd_weight: float, on_step: Callable[[int, float], None] | None,
         before_step: Callable[[int], None] | None = None, compile: bool | None = False) -> PhaseLog:
    sched = make_scheduler(opt, "cosine", steps)
    net = maybe_compile(model, compile)  # graph breaks fall back to eager; the annealed temperature goes dynamic
    model.train()
    teacher.eval()
    device = model_device(model)
    losses: list[float] = []
    t0 = time.perf_counter()
    for step, batch in zip(range(steps), _cycle(batches), strict=False):
        x, y = split_batch(batch)
        if y is None:
            raise ConfigError("DQSS in QAT mode trains on labels: pass (x, y) batches")
        x, y = x.to(device), y.to(device)
        if before_step is not None:
            before_step(step)
        with torch.no_grad():
            t = teacher(x) if kd_weight > 0 else x.new_zeros(())
        loss = _distill_ce(net(x), t, y, kd_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    return PhaseLog(losses, time.perf_counter() - t0)


def _network_weights(model: nn.Module) -> list[nn.Parameter]:
    """Conv/linear weights, biases and BN affine -- not the quantizers or the mixtures standing in for them."""
    return [p for n, p in model.named_parameters() if not any(k in n for k in (".aq.", ".wq."))]


def search_qat(model: nn.Module, teacher: nn.Module, mixers: dict[str, Mixer], batches: Iterable[Batch], steps: int,
               lr: float, scale_lr: float, arch_lr: float, kd_weight: float = 1.0,
               on_step: Callable[[int, float], None] | None = None, anneal: Anneal | None = None,
               compile: bool | None = False) -> PhaseLog:
    """One loss, one backward per step; parameter groups: network weights (lr), candidate scales (scale_lr),
    alpha/beta (arch_lr); all cosine-decayed; `anneal` sets the mixtures' temperature before each step; `compile`:
    torch.compile the model (None: auto, train/compiling.py)."""
    arch, scales = mixer_params(mixers)
    weights = _network_weights(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in (*weights, *scales, *arch):
        p.requires_grad_(True)
    opt = torch.optim.AdamW([{"params": weights, "lr": lr, "weight_decay": 0.0},
                             {"params": scales, "lr": scale_lr, "weight_decay": 0.0},
                             {"params": arch, "lr": arch_lr, "weight_decay": 0.0}])
    return _run(model, teacher, batches, opt, steps, kd_weight, on_step,
                None if anneal is None else lambda step: anneal.apply(mixers, step), compile)


def finetune_fixed(model: nn.Module, teacher: nn.Module, batches: Iterable[Batch], steps: int, lr: float,
                   scale_lr: float, kd_weight: float = 1.0,
                   on_step: Callable[[int, float], None] | None = None, compile: bool | None = False) -> PhaseLog:
    """LSQ fine-tuning of the argmax strategy (mixers detached): weights and the chosen scales/offsets; `compile`:
    torch.compile the model (None: auto)."""
    for p in model.parameters():
        p.requires_grad_(True)
    weights, quant = split_params(model)
    opt = torch.optim.AdamW([{"params": weights, "lr": lr, "weight_decay": 0.0},
                             {"params": quant, "lr": scale_lr, "weight_decay": 0.0}])
    return _run(model, teacher, batches, opt, steps, kd_weight, on_step, compile=compile)
