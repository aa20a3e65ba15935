"""EasyQuant: per layer, grid-search weight scales (per channel) and the input scale to maximise the cosine
similarity between the layer's FP32 output and its quantized output, alternating for a few rounds."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from quantsearch.quant.fakequant import fake_quant
from quantsearch.quant.forms import QuantForm, grid_for


@dataclass(frozen=True)
class EasyQuantResult:
    """Refined scales and the layer-output cosine before and after."""

    w_scale: torch.Tensor
    a_scale: torch.Tensor
    cos_before: float
    cos_after: float


def _apply(layer: nn.Conv2d | nn.Linear, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        out: torch.Tensor = layer._conv_forward(x, w, layer.bias)
        return out
    return F.linear(x, w, layer.bias)


def _cos(a: torch.Tensor, b: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Cosine over everything, or per output channel (dim 1)."""
    if per_channel:
        a = a.transpose(0, 1).reshape(a.shape[1], -1)
        b = b.transpose(0, 1).reshape(b.shape[1], -1)
        return F.cosine_similarity(a, b, dim=1, eps=1e-12)
    return F.cosine_similarity(a.reshape(1, -1), b.reshape(1, -1), dim=1, eps=1e-12)


@torch.no_grad()
def easyquant_layer(layer: nn.Conv2d | nn.Linear, x: torch.Tensor, w_form: QuantForm, a_form: QuantForm,
                    w_scale: torch.Tensor, a_scale: torch.Tensor, nonneg: bool, w_zp: torch.Tensor | None = None,
                    a_zp: torch.Tensor | None = None, steps: int = 100, lo: float = 0.5, hi: float = 2.0,
                    rounds: int = 2) -> EasyQuantResult:
    """Refine (w_scale [C or 1], a_scale [1]) for one conv/linear on its FP32 inputs `x`.

    The grid always holds 1.0 and only strict improvements are taken, so the cosine never drops.
    """
    weight = layer.weight.detach()
    y = _apply(layer, x, weight)
    wq_min, wq_max = grid_for(w_form, False)
    aq_min, aq_max = grid_for(a_form, nonneg)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    grid = torch.cat([torch.linspace(lo, hi, steps), torch.ones(1)]).tolist()

    def qw(s: torch.Tensor) -> torch.Tensor:
        s = s.reshape(shape) if w_form.per_channel else s.reshape(())
        z = None if w_zp is None else (w_zp.reshape(shape) if w_form.per_channel else w_zp.reshape(()))
        return fake_quant(weight, s, z, wq_min, wq_max)

    def qa(s: torch.Tensor) -> torch.Tensor:
        return fake_quant(x, s.reshape(()), None if a_zp is None else a_zp.reshape(()), aq_min, aq_max)

    ws, as_ = w_scale.clone(), a_scale.clone()
    start = float(_cos(y, _apply(layer, qa(as_), qw(ws)), False))
    for _ in range(rounds):
        xq = qa(as_)
        best = _cos(y, _apply(layer, xq, qw(ws)), w_form.per_channel)
        base = ws.clone()
        for g in grid:
            cand = base * g
            c = _cos(y, _apply(layer, xq, qw(cand)), w_form.per_channel)
            better = c > best
            if w_form.per_channel:
                ws = torch.where(better, cand, ws)
                best = torch.where(better, c, best)
            elif bool(better):
                ws, best = cand, c
        wq = qw(ws)
        best_a = _cos(y, _apply(layer, qa(as_), wq), False)
        base_a = as_.clone()
        for g in grid:
            c = _cos(y, _apply(layer, qa(base_a * g), wq), False)
            if bool(c > best_a):
                as_, best_a = base_a * g, c
    end = float(_cos(y, _apply(layer, qa(as_), qw(ws)), False))
    if end < start:  # per-channel gains need not add up to a whole-layer gain: never return worse
        return EasyQuantResult(w_scale.clone(), a_scale.clone(), start, start)
    return EasyQuantResult(ws, as_, start, end)
