"""The supernet core: convert + calibrate every form, one sandwich step per batch, per-epoch callbacks,
resumable state; `train_supernet(model, batches, settings) -> Supernet` on any model and batches.

Plain PyTorch. A distributed runner supplies `sync_grads` (all-reduce) and a `save` callback (supernet/job.py,
distributed/train_supernet.py). Same settings + seed + batches give the same result on CPU.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from quantsearch._util import seed_everything
from quantsearch.config import QuantTarget, SupernetSpec, make_section
from quantsearch.data.loader import Batch, batch_inputs, split_batch
from quantsearch.device import model_device
from quantsearch.errors import TrainingError
from quantsearch.quant import (
    QuantPolicy,
    calibrate_model,
    convert,
    get_calibrator,
    get_profile,
    quant_layers,
    split_params,
)
from quantsearch.space import SearchSpace, SubnetConfig, layer_costs, resolve_config, set_config
from quantsearch.space.cost import LayerCost
from quantsearch.supernet.bn import recalibrate_bn
from quantsearch.supernet.losses import gpg_loss, wdr_from_weights, wdr_weights
from quantsearch.supernet.measure import measure_subnet
from quantsearch.supernet.sampling import SandwichSampler, net_forms
from quantsearch.train import compiling
from quantsearch.train.compiling import maybe_compile
from quantsearch.train.optim import make_scheduler
from quantsearch.train.progress import epoch_progress

Payload = dict[str, Any]
Progress = Callable[[str, int], AbstractContextManager[Callable[[int, float], None]]]


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
    net: nn.Module | None = None  # what the sandwich step calls: torch.compile(model) when compiling, else model
    wdr: Callable[..., torch.Tensor] = wdr_from_weights  # compiled alongside `net`: every layer's moments fused

    def forward_module(self) -> nn.Module:
        """The module a training step runs (compiled or the model; the same parameters either way)."""
        return self.model if self.net is None else self.net


def _make_optimizer(model: nn.Module, sn: SupernetSpec) -> torch.optim.Optimizer:
    weights, quant = split_params(model)
    groups = [{"params": weights, "lr": sn.lr, "weight_decay": sn.weight_decay},
              {"params": quant, "lr": sn.scale_lr, "weight_decay": 0.0}]
    if sn.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True)
    return (torch.optim.AdamW if sn.optimizer == "adamw" else torch.optim.Adam)(groups)


def build_run(model: nn.Module, sn: SupernetSpec, calib_batches: Iterable[Batch], steps_per_epoch: int, *,
              seed: int = 0, example: torch.Tensor | None = None) -> SupernetRun:
    """Convert a copy of the float `model` (where it is), initialise every form's scale table on the first
    `sn.calib_images` images of `calib_batches` with `sn.init_calibrator`, and set up sampler, optimiser and a
    schedule of `steps_per_epoch * sn.epochs` steps. `example` (an input batch) finds the execution order.
    With `sn.compile` on (auto: CUDA), the sandwich step runs torch.compile(model): one graph for every subnet
    (each Ray Train worker builds and compiles its own copy)."""
    gen = seed_everything(seed)
    qmodel = convert(model, QuantPolicy(), example)
    calibrate_model(qmodel, batch_inputs(calib_batches, sn.calib_images), get_calibrator(sn.init_calibrator))
    space = SearchSpace.for_model(qmodel, get_profile(sn.profile))
    sampler = SandwichSampler(space, seed)
    opt = _make_optimizer(qmodel, sn)
    sched = make_scheduler(opt, sn.schedule, steps_per_epoch * sn.epochs)
    net = maybe_compile(qmodel, sn.compile)
    wdr = wdr_from_weights if net is qmodel else torch.compile(wdr_from_weights, backend=compiling.BACKEND)
    return SupernetRun(qmodel, space, sampler, opt, sched, gen, net=net, wdr=wdr)


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


def _drop_unused_grads(model: nn.Module, configs: list[SubnetConfig]) -> None:
    """Give the tables of forms no subnet of this step used no gradient (None), as eager autograd does: a compiled
    graph selects a form with torch.where and hands every table a zero gradient, on which Adam would keep moving
    the table by its stale momentum."""
    for name, layer in quant_layers(model).items():
        for quantizer, forms in ((layer.wq, {c[name].weight for c in configs}),
                                 (layer.aq, {c[name].activation for c in configs})):
            used = {f"{'pc' if f.per_channel else 'pt'}_{'sym' if f.symmetric else 'asym'}" for f in forms}
            for pname, param in quantizer.named_parameters(recurse=False):
                if pname.split("_", 1)[1] not in used:
                    param.grad = None


def sandwich_step(run: SupernetRun, x: torch.Tensor, y: torch.Tensor, sn: SupernetSpec,
                  sync_grads: Callable[[nn.Module], None] | None = None) -> dict[str, float]:
    """WDR, then max (CE), then random + min subnets ordered by bits, each distilling from the one above.

    The losses stay on the device until the step is done (one host sync per step, not one per subnet)."""
    model = run.model
    net = run.forward_module()
    model.train()
    device = model_device(model)
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    run.optimizer.zero_grad(set_to_none=True)
    losses: dict[str, torch.Tensor] = {}
    if sn.wdr:
        w = run.wdr(wdr_weights(model), sn.wdr_kurt_weight, sn.wdr_skew_weight)
        if w.requires_grad:  # a model with one quantized layer has nothing to regularize
            w.backward()
        losses["wdr"] = w.detach().to(device)
    form = run.sampler.form()
    configs = [run.sampler.max_config(form)]
    set_config(model, configs[0])
    logits = net(x)
    ce = F.cross_entropy(logits, y)
    ce.backward()
    losses["max"] = ce.detach()
    teacher = logits.detach()
    chain = sorted(run.sampler.random_configs(sn.n_random), key=_avg_bits, reverse=True)
    chain.append(run.sampler.min_config(form))
    configs += chain
    for k, cfg in enumerate(chain):
        set_config(model, cfg)
        logits = net(x)
        loss = gpg_loss(logits, teacher, y, sn.gpg_lambda, sn.temperature) if sn.gpg else F.cross_entropy(logits, y)
        loss.backward()
        losses["min" if k == len(chain) - 1 else f"random{k}"] = loss.detach()
        teacher = logits.detach()
    if net is not model:
        _drop_unused_grads(model, configs)
    if sync_grads is not None:
        sync_grads(model)
    if sn.grad_clip is not None:
        torch.nn.utils.clip_grad_value_(model.parameters(), sn.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    values = torch.stack([v.float().reshape(()) for v in losses.values()]).tolist()
    out = dict(zip(losses, values, strict=True))
    bad = next((k for k, v in out.items() if not math.isfinite(v)), None)
    if bad is not None:  # read from the step's one sync; raised before the epoch's checkpoint: the last good one stays
        named: dict[str, SubnetConfig] = {"max": run.sampler.max_config(form), "min": chain[-1]}
        culprit = named.get(bad) or (chain[int(bad[6:])] if bad.startswith("random") else None)
        which = f"the {bad} subnet ({culprit.summary()})" if culprit is not None else "the WDR loss"
        raise TrainingError(f"supernet loss became {out[bad]} at step {run.scheduler.last_epoch} (epoch "
                            f"{run.epoch + 1}) on {which}; the last good checkpoint is kept: lower supernet.lr or "
                            "supernet.scale_lr (or set supernet.grad_clip), then rerun to resume from it")
    return out


def train_epoch(run: SupernetRun, batches: Iterable[Batch], sn: SupernetSpec,
                sync_grads: Callable[[nn.Module], None] | None = None,
                on_batch: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """One sandwich step per (x, y) batch of one pass over `batches`; mean losses."""
    sums: dict[str, float] = {}
    n = 0
    for i, batch in enumerate(batches):
        x, y = split_batch(batch)
        if y is None:
            raise ValueError("supernet training needs labelled batches (x, y)")
        losses = sandwich_step(run, x, y, sn, sync_grads)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
        if on_batch is not None:
            on_batch(i, losses["max"])
    return {f"loss_{k}": v / max(n, 1) for k, v in sums.items()}


def _steps(batches: Iterable[Batch]) -> int:
    """Batches per pass: len() where there is one, else one pass counted (re-iterable batches only)."""
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return sum(1 for _ in batches)


def fit(run: SupernetRun, batches: Iterable[Batch], sn: SupernetSpec,
        sync_grads: Callable[[nn.Module], None] | None = None,
        measure: Callable[[SupernetRun], dict[str, float]] | None = None,
        save: Callable[[SupernetRun, dict[str, float]], None] | None = None,
        progress: Progress | None = None) -> SupernetRun:
    """Train from run.epoch to sn.epochs, one pass over `batches` per epoch; after each epoch record the losses,
    `measure(run)` (e.g. val accuracy of the max and min subnets) and the epoch's seconds, then call `save`."""
    steps = _steps(batches)
    for epoch in range(run.epoch, sn.epochs):
        t0 = time.perf_counter()
        if progress is not None:
            with progress(f"supernet epoch {epoch + 1}/{sn.epochs}", steps) as tick:
                losses = train_epoch(run, batches, sn, sync_grads, tick)
        else:
            losses = train_epoch(run, batches, sn, sync_grads)
        run.epoch = epoch + 1
        seconds = time.perf_counter() - t0
        metrics = {"epoch": float(run.epoch), **losses, **(measure(run) if measure is not None else {}),
                   "epoch_seconds": seconds}
        run.history.append(metrics)
        if save is not None:
            save(run, metrics)
    return run


@dataclass(frozen=True)
class Supernet:
    """A trained elastic supernet: the converted model (every form's tables trained; float until a config is
    set), its search space, and the per-epoch history. `subnet(config)` extracts one quantized model."""

    model: nn.Module
    space: SearchSpace
    history: tuple[dict[str, float], ...] = ()
    input_shape: tuple[int, ...] = ()  # one input's shape (C, H, W): what the cost model traces

    def costs(self) -> list[LayerCost]:
        """Per-layer MACs and sizes (space.cost): BitOps and weight bytes of any config of this space."""
        if not self.input_shape:
            raise ValueError("this Supernet has no input_shape; build it with train_supernet")
        return layer_costs(self.model, self.input_shape)

    def sample(self, n: int, val_batches: Iterable[Batch], bn_batches: Iterable[Batch], bn_images: int = 512,
               seed: int = 0, forms: Literal["all", "first"] = "all") -> list[dict[str, Any]]:
        """Measure `n` subnets drawn stratified over forms and average bits (BN recalibrated on `bn_images` images
        of `bn_batches`, top-1 on `val_batches`; both re-iterable): the rows CQAP (`fit_predictor`) learns from."""
        from quantsearch.supernet.sample import sample

        return sample(self.model, self.space, self.costs(), val_batches, bn_batches, n, seed, bn_images, forms)

    def config(self, config: str | QuantTarget | SubnetConfig) -> SubnetConfig:
        """A SubnetConfig in this space: 'W4A4' (per-channel symmetric weights, affine activations), a
        QuantTarget (forms of your choice; its profile is this space's), or a SubnetConfig (checked)."""
        if isinstance(config, SubnetConfig):
            cfg = config
        else:
            target = config if isinstance(config, QuantTarget) else make_section(QuantTarget, config=config)
            cfg = resolve_config(target.model_copy(update={"profile": self.space.profile.name}), self.model)
        if not self.space.contains(cfg):
            from quantsearch.errors import ConfigError

            raise ConfigError(f"{cfg.summary()} is not in this supernet's space (profile '{self.space.profile.name}')")
        return cfg

    def subnet(self, config: str | QuantTarget | SubnetConfig, bn_batches: Iterable[Batch] | None = None,
               bn_images: int = 2048) -> nn.Module:
        """A copy of the supernet's model quantized as `config`, its BN statistics recalibrated on `bn_images`
        images of `bn_batches` (strongly advised: BN is shared by every subnet), in eval mode."""
        cfg = self.config(config)
        model = copy.deepcopy(self.model)
        set_config(model, cfg)
        if bn_batches is not None:
            recalibrate_bn(model, bn_batches, bn_images)
        return model.eval()


def measure_max_min(run: SupernetRun, batches: Iterable[Batch], bn_batches: Iterable[Batch] | None,
                    bn_images: int) -> dict[str, float]:
    """Top-1 on `batches` of the max and min subnets (first network-wide form), BN recalibrated first."""
    form = net_forms(run.space)[0]
    return {"val_acc_max": measure_subnet(run.model, run.sampler.max_config(form), batches, bn_batches, bn_images),
            "val_acc_min": measure_subnet(run.model, run.sampler.min_config(form), batches, bn_batches, bn_images)}


def train_supernet(model: nn.Module, train_batches: Iterable[Batch], settings: SupernetSpec | None = None, *,
                   calib_batches: Iterable[Batch] | None = None, val_batches: Iterable[Batch] | None = None,
                   bn_batches: Iterable[Batch] | None = None, example: Batch | None = None, seed: int = 0,
                   progress: bool = False, on_epoch: Callable[[dict[str, float]], None] | None = None) -> Supernet:
    """Train an EQ-Net supernet from a float `model` (any nn.Module, on any device; left as it is) on
    `train_batches` ((x, y), e.g. a DataLoader: one pass per epoch, moved to the model's device).

    Every form's scales start from `settings.init_calibrator` on `settings.calib_images` images of
    `calib_batches` (default: `train_batches`); each step trains the max, `settings.n_random` random and the min
    subnets (sandwich rule, WDR, GPG). With `val_batches`, each epoch records the max and min subnets' top-1
    (BN recalibrated on `bn_batches`, default `train_batches`). `settings.batch_size` is the job's: here the
    batches are yours. Returns the Supernet; `supernet.subnet('W4A4', bn_batches)` extracts one model.
    """
    sn = settings or SupernetSpec()
    calib = batch_inputs(calib_batches if calib_batches is not None else train_batches, sn.calib_images)
    x = calib[0][:2] if example is None else split_batch(example)[0]
    run = build_run(model, sn, calib, _steps(train_batches), seed=seed, example=x)
    measure = None
    if val_batches is not None:
        vb, bb = val_batches, bn_batches if bn_batches is not None else train_batches

        def measure(r: SupernetRun) -> dict[str, float]:
            return measure_max_min(r, vb, bb, sn.bn_images)

    fit(run, train_batches, sn, measure=measure, save=(lambda _r, m: on_epoch(m)) if on_epoch else None,
        progress=(lambda label, total: epoch_progress(label, total)) if progress else None)
    return Supernet(run.model, run.space, tuple(run.history), tuple(x.shape[1:]))
