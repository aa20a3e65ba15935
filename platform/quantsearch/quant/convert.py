"""convert(model, policy): swap every Conv2d / Linear for its quantized twin, without editing the model."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from quantsearch.device import model_device
from quantsearch.quant.calibrators import Calibrator, MSECalibrator
from quantsearch.quant.forms import LayerConfig
from quantsearch.quant.layers import QUANT_LAYER_TYPES, QuantConv2d, QuantLinear, QuantMixin


@dataclass(frozen=True)
class QuantPolicy:
    """Which layers are quantized and which are pinned (first and last at 8 bits by default)."""

    pin_first_last: bool = True
    pinned_bits: int = 8
    skip: tuple[str, ...] = ()


def quant_layers(model: nn.Module) -> dict[str, QuantMixin]:
    """Quantized layers by module name, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QUANT_LAYER_TYPES)}


def _execution_order(model: nn.Module, example: torch.Tensor | None) -> list[str]:
    names = {m: n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)}
    if example is None:
        return list(names.values())
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _inp: order.append(names[mod])) for m in names]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(example.to(model_device(model)))
            model.train(was)
    finally:
        for h in hooks:
            h.remove()
    seen: list[str] = []
    for n in order:
        if n not in seen:
            seen.append(n)
    return seen + [n for n in names.values() if n not in seen]


def convert(model: nn.Module, policy: QuantPolicy | None = None, example: torch.Tensor | None = None
            ) -> nn.Module:
    """Return a copy of `model` with quantizable layers swapped in (float until a config is set).

    `example` (one input batch) lets first/last be found in execution order; otherwise registration order.
    """
    policy = policy or QuantPolicy()
    model = copy.deepcopy(model)
    order = [n for n in _execution_order(model, example) if n not in policy.skip]
    pinned = {order[0], order[-1]} if (policy.pin_first_last and order) else set()
    modules = dict(model.named_modules())
    for name in order:
        child = modules[name]
        q = QuantConv2d.from_float(child) if isinstance(child, nn.Conv2d) else QuantLinear.from_float(child)
        q.pinned = name in pinned
        parent_name, _, attr = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, attr, q)
    model.quant_order = order  # type: ignore[attr-defined]
    model.quant_pinned_bits = policy.pinned_bits  # type: ignore[attr-defined]
    return model


def set_layer_configs(model: nn.Module, configs: dict[str, LayerConfig | None]) -> None:
    """Set each named layer's config (None = float); raises KeyError on unknown layer names."""
    layers = quant_layers(model)
    unknown = set(configs) - set(layers)
    if unknown:
        raise KeyError(f"no quantized layer named {sorted(unknown)[0]}")
    for name, cfg in configs.items():
        layers[name].set_layer_config(cfg)


def disable_quant(model: nn.Module) -> None:
    """Run every quantized layer in float."""
    for layer in quant_layers(model).values():
        layer.set_layer_config(None)


@torch.no_grad()
def collect_inputs(model: nn.Module, inputs: Iterable[torch.Tensor], max_samples: int = 1 << 18,
                   per_batch: int = 1 << 16, keep_images: int = 0
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Run the model in float (eval mode) and return, per quantized layer, a bounded random sample of its
    input values (flat; a seeded random subset of at most `per_batch` values per batch) and the first
    `keep_images` inputs whole (for layer-wise searches like EasyQuant).

    The sample ends with the exact min and max over EVERY batch, so range-based methods (MaxAbs, the KL
    histogram's range) see the true running extremes, not the sample's."""
    layers = quant_layers(model)
    saved = {n: layer.layer_config() for n, layer in layers.items()}
    disable_quant(model)
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    whole: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    counts = dict.fromkeys(layers, 0)
    kept = dict.fromkeys(layers, 0)
    extremes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    batch_index = dict.fromkeys(layers, 0)

    def hook(name: str):  # noqa: ANN202 - closure factory
        def fn(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
            x = inp[0].detach()
            lo, hi = x.min().reshape(1), x.max().reshape(1)  # kept on the device: no host sync per batch
            old = extremes.get(name)
            extremes[name] = (lo, hi) if old is None else (torch.minimum(old[0], lo), torch.maximum(old[1], hi))
            if counts[name] < max_samples:
                flat = x.reshape(-1)
                # a seeded random subset: a stride that is a multiple of the feature map's width would sample
                # one image column only (its border: a constant background's responses, spikes that broke KL)
                k = min(per_batch, flat.numel(), max_samples - counts[name])
                # seeded by the batch and the tensor's size: layers that read one tensor get the same sample
                gen = torch.Generator().manual_seed(batch_index[name] * 1_000_003 + flat.numel())
                idx = torch.randperm(flat.numel(), generator=gen)[:k] if k < flat.numel() else None
                samples[name].append(flat.clone() if idx is None else flat[idx.to(flat.device)])
                counts[name] += samples[name][-1].numel()
            batch_index[name] += 1
            if kept[name] < keep_images:
                whole[name].append(x[: keep_images - kept[name]].clone())
                kept[name] += len(whole[name][-1])
        return fn

    handles = [layer.register_forward_pre_hook(hook(n)) for n, layer in layers.items()]  # type: ignore[attr-defined]
    was = model.training
    model.eval()
    device = model_device(model)
    try:
        for x in inputs:
            model(x.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
        for name, cfg in saved.items():
            layers[name].set_layer_config(cfg)
    flat = {n: torch.cat([*v, *extremes[n]]) for n, v in samples.items() if v}
    return flat, {n: torch.cat(v) for n, v in whole.items() if v}


@torch.no_grad()
def calibrate_model(model: nn.Module, inputs: Iterable[torch.Tensor], calibrator: Calibrator | None = None,
                    max_samples: int = 1 << 18, per_batch: int = 1 << 16) -> None:
    """Initialise every quantizer's tables for every form: weights from themselves, inputs from a sample of
    their float activations."""
    calibrator = calibrator or MSECalibrator()
    samples, _ = collect_inputs(model, inputs, max_samples, per_batch)
    for name, layer in quant_layers(model).items():
        layer.wq.calibrate(layer.weight, calibrator)  # type: ignore[attr-defined]
        if name in samples:
            layer.aq.calibrate(samples[name], calibrator)
