"""convert(model, policy): swap every Conv2d / Linear for its quantized twin, without editing the model."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from quantsearch.device import model_device
from quantsearch.errors import ConfigError
from quantsearch.quant.forms import LayerConfig
from quantsearch.quant.layers import QUANT_LAYER_TYPES, QuantConv2d, QuantLayer, QuantLinear


@dataclass(frozen=True)
class QuantPolicy:
    """Which layers are quantized and which are pinned (first and last at 8 bits by default)."""

    pin_first_last: bool = True
    pinned_bits: int = 8
    skip: tuple[str, ...] = ()


@dataclass(frozen=True)
class QuantInfo:
    """What `convert` recorded about a model: its quantized layers in execution order, the pinned ones (first and
    last by default) and the bits they are pinned to."""

    order: tuple[str, ...]
    pinned: tuple[str, ...]
    pinned_bits: int = 8


INFO_ATTR = "quantsearch_info"


def quant_info(model: nn.Module) -> QuantInfo:
    """The QuantInfo `convert` attached to `model` (a model converted some other way: registration order, the
    layers' own `pinned` flags, 8 bits)."""
    info = getattr(model, INFO_ATTR, None)
    if isinstance(info, QuantInfo):
        return info
    layers = quant_layers(model)
    return QuantInfo(tuple(layers), tuple(n for n, layer in layers.items() if layer.pinned))


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
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
            try:
                model(example.to(model_device(model)))
            except RuntimeError as exc:  # the example does not fit the model (channels, size): one line
                raise ConfigError(f"the example input of shape {list(example.shape)} does not fit the model "
                                  f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); pass a batch "
                                  "shaped like the model's inputs (channels, height, width)") from exc
            finally:
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
    if quant_layers(model):
        raise ValueError("the model is already converted (it has quantized layers); convert its float original")
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
    setattr(model, INFO_ATTR, QuantInfo(tuple(order), tuple(n for n in order if n in pinned), policy.pinned_bits))
    return model


def split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(network weights, quantizer scales/offsets) of a converted model."""
    quant: list[nn.Parameter] = []
    weights: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        (quant if (".wq." in name or ".aq." in name) else weights).append(p)
    return weights, quant


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
