"""The supernet training loop: one sandwich step per batch, per-epoch checkpoints, resumable.

Plain PyTorch. The distributed runner supplies `sync_grads` (all-reduce) and checkpoint I/O callbacks;
in-process runs use files. Same spec + seed + world size give the same result on CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quantsearch._util import seed_everything
from quantsearch.config import JobSpec, SupernetSpec
from quantsearch.data import PreparedData, batches, take
from quantsearch.device import model_device, resolve_device
from quantsearch.quant import calibrate_model, get_calibrator, get_profile
from quantsearch.space import SearchSpace, SubnetConfig, set_config
from quantsearch.supernet.losses import gpg_loss, wdr_loss
from quantsearch.supernet.measure import measure
from quantsearch.supernet.sampling import SandwichSampler, net_forms
from quantsearch.train.optim import make_scheduler
from quantsearch.train.qat import quantized_model, split_params

Payload = dict[str, Any]


@dataclass
class SupernetRun:
    """Everything a supernet run carries between steps (and into its checkpoint)."""

    model: nn.Module
    space: SearchSpace
    sampler: SandwichSampler
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    gen: torch.Generator
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int | None = None


def _make_optimizer(model: nn.Module, sn: SupernetSpec) -> torch.optim.Optimizer:
    weights, quant = split_params(model)
    groups = [{"params": weights, "lr": sn.lr, "weight_decay": sn.weight_decay},
              {"params": quant, "lr": sn.scale_lr, "weight_decay": 0.0}]
    if sn.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True)
    return (torch.optim.AdamW if sn.optimizer == "adamw" else torch.optim.Adam)(groups)


def supernet_data(spec: JobSpec, data: PreparedData) -> PreparedData:
    """The data the supernet trains on: the train split, or a seeded subset of it (train_images)."""
    from dataclasses import replace

    sn = spec.supernet or SupernetSpec()
    if sn.train_images is None:
        return data
    return replace(data, train=take(data.train, sn.train_images, spec.seed + 2))


def example_input(data: PreparedData) -> torch.Tensor:
    """Two normalised training images (for tracing layer order and shapes)."""
    return data.example(0)


def build_run(spec: JobSpec, data: PreparedData, fp32: Payload, world: int = 1,
              device: str | torch.device | None = None) -> SupernetRun:
    """Convert the FP32 model on `device` (default: the job's), initialise every scale table on calibration
    images, set up optimiser etc."""
    sn = spec.supernet or SupernetSpec()
    gen = seed_everything(spec.seed)
    model = quantized_model(fp32, example_input(data), resolve_device(spec.device if device is None else device))
    calib = take(data.train, sn.calib_images, spec.seed + 1)
    calibrate_model(model, (x for x, _ in batches(calib, 256, data.mean, data.std)), get_calibrator(sn.init_calibrator))
    space = SearchSpace.for_model(model, get_profile(sn.profile))
    sampler = SandwichSampler(space, spec.seed)
    opt = _make_optimizer(model, sn)
    steps = -(-len(data.train) // (sn.batch_size * world))
    sched = make_scheduler(opt, sn.schedule, steps * sn.epochs)
    return SupernetRun(model, space, sampler, opt, sched, gen)


def state_payload(run: SupernetRun) -> Payload:
    """The resumable state of a run (weights_only-safe types)."""
    return {"state_dict": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "sampler": run.sampler.state(), "rng": run.gen.get_state(),
            "epoch": run.epoch, "history": run.history}


def load_state(run: SupernetRun, payload: Payload) -> None:
    """Restore a run from `state_payload` output."""
    run.model.load_state_dict(payload["state_dict"])
    run.optimizer.load_state_dict(payload["optimizer"])
    run.scheduler.load_state_dict(payload["scheduler"])
    run.sampler.set_state(payload["sampler"])
    run.gen.set_state(payload["rng"])
    run.epoch = int(payload["epoch"])
    run.history = list(payload["history"])
    run.resumed_from = run.epoch


def _avg_bits(cfg: SubnetConfig) -> float:
    w, a = cfg.avg_bits()
    return w + a


def sandwich_step(run: SupernetRun, x: torch.Tensor, y: torch.Tensor, sn: SupernetSpec,
                  sync_grads: Callable[[nn.Module], None] | None = None) -> dict[str, float]:
    """WDR, then max (CE), then random + min subnets ordered by bits, each distilling from the one above."""
    model = run.model
    model.train()
    device = model_device(model)
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    run.optimizer.zero_grad(set_to_none=True)
    losses: dict[str, float] = {}
    if sn.wdr:
        w = wdr_loss(model, sn.wdr_kurt_weight, sn.wdr_skew_weight)
        w.backward()
        losses["wdr"] = w.item()
    form = run.sampler.form()
    set_config(model, run.sampler.max_config(form))
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    ce.backward()
    losses["max"] = ce.item()
    teacher = logits.detach()
    chain = sorted(run.sampler.random_configs(sn.n_random), key=_avg_bits, reverse=True)
    chain.append(run.sampler.min_config(form))
    for k, cfg in enumerate(chain):
        set_config(model, cfg)
        logits = model(x)
        loss = gpg_loss(logits, teacher, y, sn.gpg_lambda, sn.temperature) if sn.gpg else F.cross_entropy(logits, y)
        loss.backward()
        losses["min" if k == len(chain) - 1 else f"random{k}"] = loss.item()
        teacher = logits.detach()
    if sync_grads is not None:
        sync_grads(model)
    if sn.grad_clip is not None:
        torch.nn.utils.clip_grad_value_(model.parameters(), sn.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    return losses


def train_epoch(run: SupernetRun, data: PreparedData, sn: SupernetSpec, rank: int = 0, world: int = 1,
                sync_grads: Callable[[nn.Module], None] | None = None,
                on_batch: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """One epoch over this rank's shard (same seeded permutation on every rank); mean losses."""
    perm = torch.randperm(len(data.train), generator=run.gen)
    shard = data.train.subset(perm[rank::world])
    steps = -(-len(data.train) // (sn.batch_size * world))
    sums: dict[str, float] = {}
    n = 0
    for i, (x, y) in enumerate(batches(shard, sn.batch_size, data.mean, data.std)):
        if i >= steps:  # ranks with a longer shard stop together with the others
            break
        losses = sandwich_step(run, x, y, sn, sync_grads)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
        if on_batch is not None:
            on_batch(i, losses["max"])
    return {f"loss_{k}": v / max(n, 1) for k, v in sums.items()}


def epoch_metrics(run: SupernetRun, data: PreparedData, sn: SupernetSpec, losses: dict[str, float],
                  seconds: float) -> dict[str, float]:
    """Losses plus val accuracy of the max and min subnets (first network-wide form)."""
    form = net_forms(run.space)[0]
    acc_max = measure(run.model, run.sampler.max_config(form), data, sn.bn_images).val_acc
    acc_min = measure(run.model, run.sampler.min_config(form), data, sn.bn_images).val_acc
    return {"epoch": float(run.epoch), **losses, "val_acc_max": acc_max, "val_acc_min": acc_min,
            "epoch_seconds": seconds}


def fit(run: SupernetRun, data: PreparedData, sn: SupernetSpec, rank: int = 0, world: int = 1,
        sync_grads: Callable[[nn.Module], None] | None = None,
        save: Callable[[SupernetRun, dict[str, float]], None] | None = None,
        progress: Callable[[str, int], Any] | None = None) -> SupernetRun:
    """Train from run.epoch to sn.epochs; after each epoch measure max/min and call `save`."""
    steps = -(-len(data.train) // (sn.batch_size * world))
    for epoch in range(run.epoch, sn.epochs):
        t0 = time.perf_counter()
        if progress is not None:
            with progress(f"supernet epoch {epoch + 1}/{sn.epochs}", steps) as tick:
                losses = train_epoch(run, data, sn, rank, world, sync_grads, tick)
        else:
            losses = train_epoch(run, data, sn, rank, world, sync_grads)
        run.epoch = epoch + 1
        metrics = epoch_metrics(run, data, sn, losses, time.perf_counter() - t0)
        run.history.append(metrics)
        if save is not None:
            save(run, metrics)
    return run
