"""The DQSS search on any model and batches: candidates from every calibrator, mixers in place of each layer's
quantizers, alpha/beta trained (PTQ: against the FP32 logits; QAT: with the weights), argmax -> a Strategy."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quantsearch.config import DQSSSpec
from quantsearch.data.loader import Batch, batch_inputs, split_batch
from quantsearch.device import model_device
from quantsearch.dqss.mixers import (
    Anneal,
    Mixer,
    attach_mixers,
    candidate_scales,
    detach_mixers,
    mixer_params,
    shared_input_groups,
)
from quantsearch.dqss.qat import PhaseLog, finetune_fixed, search_qat, steps_for
from quantsearch.dqss.strategy import Strategy, choose, share_input_quantizers
from quantsearch.errors import ConfigError
from quantsearch.quant.convert import disable_quant, quant_layers
from quantsearch.space.subnet import SubnetConfig, get_config
from quantsearch.train.progress import epoch_progress

StepCallback = Callable[[int, float], None]


def train_mixers_ptq(model: nn.Module, teacher: nn.Module, mixers: dict[str, Mixer], batches: Iterable[Batch],
                     iters: int, lr: float, scale_lr: float = 0.0, on_step: StepCallback | None = None,
                     anneal: Anneal | None = None) -> PhaseLog:
    """PTQ: alpha/beta learn (weights and BN frozen, eval mode), and the candidate scales too when scale_lr > 0;
    loss = KL(FP32 logits || quantized logits), label-free. Passes over `batches` until `iters` steps; `anneal`
    sets the mixtures' temperature before each step."""
    for p in model.parameters():
        p.requires_grad_(False)
    params, scales = mixer_params(mixers)
    for t in params:
        t.requires_grad_(True)
    for t in scales:
        t.requires_grad_(scale_lr > 0)
    groups = [{"params": params, "lr": lr}]
    if scale_lr > 0:
        groups.append({"params": scales, "lr": scale_lr})
    opt = torch.optim.Adam(groups)
    model.eval()
    teacher.eval()
    device = model_device(model)
    losses: list[float] = []
    t0 = time.perf_counter()
    step = 0
    while step < iters:
        empty = True
        for batch in batches:
            empty = False
            x = split_batch(batch)[0].to(device)
            if anneal is not None:
                anneal.apply(mixers, step)
            with torch.no_grad():
                t = teacher(x)
            s = model(x)
            loss = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if on_step is not None:
                on_step(step, losses[-1])
            step += 1
            if step >= iters:
                break
        if empty:
            raise ConfigError("DQSS got no batches; pass a non-empty iterable of (x, y) or x batches")
    return PhaseLog(losses, time.perf_counter() - t0)


def float_copy(model: nn.Module) -> nn.Module:
    """A copy of a converted model that runs in float: the teacher (the same weights, quantizers off)."""
    teacher = copy.deepcopy(model)
    disable_quant(teacher)
    return teacher.eval()


@torch.no_grad()
def _round_offsets(model: nn.Module) -> None:
    """Snap the active forms' zero points to the integer grid (what the strategy deploys)."""
    for layer in quant_layers(model).values():
        cfg = layer.layer_config()
        assert cfg is not None
        layer.aq.round_offsets(cfg.activation)
        layer.wq.round_offsets(cfg.weight)


def dqss_search(model: nn.Module, batches: Iterable[Batch], settings: DQSSSpec | None = None, *,
                calib_batches: Iterable[Batch] | None = None, teacher: nn.Module | None = None,
                example: torch.Tensor | None = None, progress: bool = False,
                on_step: StepCallback | None = None) -> Strategy:
    """Choose each layer's calibrator for its input and for its weight by gradient; returns the Strategy and
    leaves `model` deploying it.

    `model` is a quantized model with a config active (`quantsearch.quantize`), on any device; `batches` any
    iterable of (x, y) or x batches (a DataLoader), moved to the model's device. PTQ (`settings.mode`) learns
    alpha/beta for `settings.iters` steps on KL to the FP32 logits (labels unused); QAT trains weights, candidate
    scales and alpha/beta together for `search_epochs` passes over `batches` (labels needed), then fine-tunes the
    argmax strategy for `finetune_epochs`. Candidates are calibrated on the first `settings.target.calib_images`
    images of `calib_batches` (default: `batches`). `teacher` defaults to the model itself in float (its weights
    as they are now). `on_step(step, loss)` sees every optimizer step.
    """
    settings = settings or DQSSSpec()
    cfg = get_config(model)
    if cfg is None or not quant_layers(model):
        raise ConfigError("dqss_search needs a quantized model with a config on every layer; "
                          "quantsearch.quantize(model, 'W4A4', example) makes one")
    teacher = float_copy(model) if teacher is None else teacher.eval()
    flags = {p: p.requires_grad for p in model.parameters()}
    calib = batch_inputs(calib_batches if calib_batches is not None else batches, settings.target.calib_images)
    if not calib:
        raise ConfigError("DQSS got no calibration batches; pass a non-empty iterable of (x, y) or x batches")
    candidates = tuple(settings.candidates)
    cands = candidate_scales(model, calib, candidates, easyquant_steps=settings.easyquant_steps)
    groups = shared_input_groups(model, calib[0][:2] if example is None else example) if settings.tie else None
    mixers = attach_mixers(model, cands, settings.temperature, groups)
    try:
        return _search(model, teacher, mixers, batches, settings, cfg, sum(len(x) for x in calib), progress, on_step)
    except BaseException:
        detach_mixers(model, mixers)  # leave the model as it came (quantizers back in place)
        raise
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


def _search(model: nn.Module, teacher: nn.Module, mixers: dict[str, Mixer], batches: Iterable[Batch],
            settings: DQSSSpec, cfg: SubnetConfig, calib_images: int, progress: bool,
            on_step: StepCallback | None) -> Strategy:
    """Train the mixtures (PTQ or QAT), take the argmax, put the quantizers back with the chosen scales."""
    candidates = tuple(settings.candidates)
    common: dict[str, Any] = {"temperature": settings.temperature, "final_temperature": settings.final_temperature,
                              "calib_images": calib_images,
                              "easyquant_steps": settings.easyquant_steps, "tied_inputs": settings.tie}
    if settings.mode == "ptq":
        log = train_mixers_ptq(model, teacher, mixers, batches, settings.iters, settings.arch_lr(),
                               settings.scales_lr(), on_step, _anneal(settings, settings.iters))
        guard: dict[str, Any] = {}
        pick = None
        if settings.guard:
            losses = {"search": _hard_kl(model, teacher, mixers, batches, None),
                      **{c: _hard_kl(model, teacher, mixers, batches, i) for i, c in enumerate(candidates)}}
            winner = min(losses, key=lambda k: losses[k])  # ties keep the search (first)
            pick = None if winner == "search" else candidates.index(winner)
            guard = {"guard": {"calib_kl": losses, "deployed": winner}}
        layers = choose(mixers, candidates, pick)
        detach_mixers(model, mixers)
        search = {"iters": settings.iters, "lr": settings.arch_lr(), "scale_lr": settings.scales_lr(),
                  "loss": "KL(fp32 || quantized) logits", **common,
                  "final_loss": log.losses[-1] if log.losses else None, "seconds": log.seconds, **guard}
        strategy = Strategy(layers, cfg, candidates, "ptq", search)
        strategy.apply(model)
        return strategy
    n_search = steps_for(settings.search_epochs, batches)
    with epoch_progress("dqss-qat search", n_search, progress) as tick:
        slog = search_qat(model, teacher, mixers, batches, n_search, settings.weight_lr, settings.scales_lr(),
                          settings.arch_lr(), settings.kd_weight, on_step=_both(tick, on_step),
                          anneal=_anneal(settings, n_search), compile=settings.compile)
    strategy = Strategy(choose(mixers, candidates), cfg, candidates, "qat")
    detach_mixers(model, mixers)
    strategy.apply(model)
    share_input_quantizers(model, strategy)
    n_ft = steps_for(settings.finetune_epochs, batches) if settings.finetune_epochs > 0 else 0
    flog = PhaseLog([], 0.0)
    if n_ft:
        with epoch_progress("dqss-qat fine-tune", n_ft, progress) as tick:
            flog = finetune_fixed(model, teacher, batches, n_ft, settings.weight_lr, settings.scales_lr(),
                                  settings.kd_weight, on_step=_both(tick, on_step, offset=n_search),
                                  compile=settings.compile)
    model.eval()
    _round_offsets(model)  # the strategy deploys integer zero points: the model holds those
    search = {"search_steps": n_search, "finetune_steps": n_ft, "search_epochs": settings.search_epochs,
              "finetune_epochs": settings.finetune_epochs, "lr": settings.weight_lr, "scale_lr": settings.scales_lr(),
              "arch_lr": settings.arch_lr(), "kd_weight": settings.kd_weight,
              "loss": "CE + kd_weight * KL(fp32 || quantized) logits", **common, "seconds": slog.seconds,
              "finetune_seconds": flog.seconds, "scales": "learned (LSQ) in search and fine-tuning; final values"}
    return Strategy(strategy.with_scales_of(model).layers, cfg, candidates, "qat", search)


@torch.no_grad()
def _hard_kl(model: nn.Module, teacher: nn.Module, mixers: dict[str, Mixer], batches: Iterable[Batch],
             pick: int | None) -> float:
    """Mean KL(FP32 || quantized) over one pass of `batches` with every mixture one-hot: its argmax (pick None) or
    candidate `pick` on every layer. alpha/beta are put back afterwards."""
    saved = {id(t): (t, t.detach().clone()) for m in mixers.values() for t in (m.act.alpha, m.weight.beta)}
    device = model_device(model)
    try:
        for t, old in saved.values():
            k = int(old.argmax()) if pick is None else pick
            t.copy_(torch.full_like(old, -1e4).index_fill_(0, torch.tensor([k], device=old.device), 0.0))
        total, n = 0.0, 0
        for batch in batches:
            x = split_batch(batch)[0].to(device)
            kl = F.kl_div(F.log_softmax(model(x), 1), F.log_softmax(teacher(x), 1), reduction="sum", log_target=True)
            total += float(kl)
            n += len(x)
    finally:
        for t, old in saved.values():
            t.copy_(old)
    return total / max(n, 1)


def _anneal(settings: DQSSSpec, steps: int) -> Anneal | None:
    """The temperature schedule of a search of `steps` steps (None: constant temperature)."""
    if settings.final_temperature == settings.temperature:
        return None
    return Anneal(settings.temperature, settings.final_temperature, steps)


def _both(tick: StepCallback, on_step: StepCallback | None, offset: int = 0) -> StepCallback:
    def call(step: int, loss: float) -> None:
        tick(step, loss)
        if on_step is not None:
            on_step(offset + step, loss)
    return call
