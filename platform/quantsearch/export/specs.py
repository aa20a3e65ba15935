"""What each quantized layer exports: its weight's integers, scales and zero points and its input's scale, zero
point and grid, read from a converted model whose offsets have been rounded to integers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from quantsearch.errors import ConfigError, QuantsearchError
from quantsearch.quant.convert import quant_layers
from quantsearch.quant.forms import LayerConfig, grid_for
from quantsearch.quant.layers import QuantLayer
from quantsearch.quant.quantizer import ElasticQuantizer


@dataclass(frozen=True, eq=False)
class WeightQuant:
    """A weight on its integer grid: values (the weight's shape), scale and integer zero point per row."""

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    per_channel: bool
    qmin: int
    qmax: int


@dataclass(frozen=True)
class ActQuant:
    """An input activation's per-tensor scale, integer zero point and grid (unsigned: [0, 2^b - 1])."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int
    unsigned: bool


@dataclass(frozen=True, eq=False)
class LayerExport:
    """One quantized layer as the graph holds it."""

    name: str
    kind: str
    config: LayerConfig
    weight: WeightQuant
    act: ActQuant
    pinned: bool


def _quantizers(name: str, layer: QuantLayer) -> tuple[ElasticQuantizer, ElasticQuantizer, LayerConfig]:
    cfg = layer.layer_config()
    if cfg is None:
        raise ConfigError(f"layer {name} runs in float (no active config); activate a config before exporting")
    if not isinstance(layer.wq, ElasticQuantizer) or not isinstance(layer.aq, ElasticQuantizer):
        raise ConfigError(f"layer {name} quantizes with a DQSS mixture; export the model the strategy builds "
                          "(Strategy.build / Strategy.apply)")
    return layer.wq, layer.aq, cfg


@torch.no_grad()
def round_model_offsets(model: nn.Module) -> int:
    """Snap every active zero point to the integer grid, in place; returns how many quantizers moved."""
    moved, seen = 0, set()
    for name, layer in quant_layers(model).items():
        wq, aq, cfg = _quantizers(name, layer)
        for q, form in ((wq, cfg.weight), (aq, cfg.activation)):
            if id(q) in seen:
                continue
            seen.add(id(q))
            _, zp = q.qparams(form)
            if zp is not None and float((zp - zp.round()).abs().max()) > 1e-4:
                moved += 1
            q.round_offsets(form)
    return moved


@torch.no_grad()
def _weight(name: str, layer: QuantLayer, wq: ElasticQuantizer, cfg: LayerConfig) -> WeightQuant:
    form = cfg.weight
    w = layer.weight.detach()
    scale, zp = wq.qparams(form)
    shape = (-1,) + (1,) * (w.dim() - 1) if form.per_channel else (1,) * w.dim()
    s = scale.detach().reshape(shape)
    z = torch.zeros_like(s) if zp is None else zp.detach().round().reshape(shape)
    qmin, qmax = grid_for(form, False)
    fake = wq(w)  # the reference model's quantized weight: its integers are what the graph stores
    q = (fake / s).round() + z
    if float(q.min()) < qmin or float(q.max()) > qmax or not torch.isfinite(q).all():
        raise QuantsearchError(f"layer {name}: its quantized weight leaves the {form.bits}-bit grid (internal error)")
    err = float(((q - z) * s - fake).abs().max()) if w.numel() else 0.0
    if err > 1e-4 * float(s.max()):
        raise QuantsearchError(f"layer {name}: weight integers do not reproduce the fake-quant weight ({err:.3g})")
    return WeightQuant(q.to(torch.int64).cpu().numpy(), scale.detach().float().cpu().numpy().reshape(-1),
                       z.to(torch.int64).cpu().numpy().reshape(-1), form.per_channel, qmin, qmax)


def layer_exports(model: nn.Module) -> list[LayerExport]:
    """Every quantized layer's export record, in registration order (zero points rounded first)."""
    out = []
    for name, layer in quant_layers(model).items():
        wq, aq, cfg = _quantizers(name, layer)
        a_scale, a_zp = aq.qparams(cfg.activation)
        qmin, qmax = grid_for(cfg.activation, aq.nonneg)
        act = ActQuant(float(a_scale.detach().reshape(())), 0 if a_zp is None else int(a_zp.detach().round()),
                       qmin, qmax, qmin == 0)
        if not (act.scale > 0 and np.isfinite(act.scale)):
            raise ConfigError(f"layer {name}: input scale {act.scale} is not a positive number; calibrate first")
        kind = "conv" if isinstance(layer, nn.Conv2d) else "linear"
        out.append(LayerExport(name, kind, cfg, _weight(name, layer, wq, cfg), act, bool(layer.pinned)))
    return out
