"""DQSS search: candidate scales from every calibrator, a mixer per layer (alpha, beta), PTQ training of the
mixture weights against the FP32 logits, argmax -> strategy."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quantsearch.data import ArrayData, batches
from quantsearch.dqss.mixed import mix_quant
from quantsearch.quant.convert import quant_layers
from quantsearch.quant.forms import grid_for
from quantsearch.quant.methods import calibrate_active

STRATEGIES = ("maxabs", "kl", "easyquant", "admm")


class Mixer(nn.Module):
    """alpha over input-scale candidates, beta over weight-scale candidates, for one quantized layer."""

    def __init__(self, layer: nn.Module, cands: dict[str, list[torch.Tensor | None]], temperature: float) -> None:
        super().__init__()
        cfg = layer.layer_config()  # type: ignore[attr-defined]
        self.w_form, self.a_form = cfg.weight, cfg.activation
        self.nonneg = bool(layer.aq.nonneg)  # type: ignore[attr-defined]
        n = len(cands["a_scale"])
        self.alpha = nn.Parameter(torch.zeros(n))
        self.beta = nn.Parameter(torch.zeros(n))
        self.temperature = temperature
        self.register_buffer("a_scales", torch.stack([t.reshape(()) for t in cands["a_scale"]]))  # type: ignore[misc]
        self.register_buffer("w_scales", torch.stack([t.reshape(-1) for t in cands["w_scale"]]))  # type: ignore[misc]
        self.a_zps = None if self.a_form.symmetric else torch.stack([t.reshape(()).round() for t in cands["a_zp"]])
        self.w_zps = None if self.w_form.symmetric else torch.stack([t.reshape(-1).round() for t in cands["w_zp"]])

    def probs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(p, q) = softmax(alpha/T), softmax(beta/T)."""
        return F.softmax(self.alpha / self.temperature, 0), F.softmax(self.beta / self.temperature, 0)

    def forward(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One convolution of the mixed input with the mixed weight."""
        p, q = self.probs()
        xm = mix_quant(x, p, self.a_scales, self.a_zps, *grid_for(self.a_form, self.nonneg), per_channel=False)
        wm = mix_quant(layer.weight, q, self.w_scales if self.w_form.per_channel else self.w_scales.reshape(-1),
                       self.w_zps, *grid_for(self.w_form, False), per_channel=self.w_form.per_channel)
        if isinstance(layer, nn.Conv2d):
            return layer._conv_forward(xm, wm, layer.bias)
        return F.linear(xm, wm, layer.bias)


def candidate_scales(model: nn.Module, inputs: list[torch.Tensor], strategies: tuple[str, ...] = STRATEGIES,
                     easyquant_steps: int = 100, easyquant_rounds: int = 2
                     ) -> dict[str, dict[str, list[torch.Tensor | None]]]:
    """Per layer, the active forms' scales (and zero points) each strategy calibrates."""
    out: dict[str, dict[str, list[torch.Tensor | None]]] = {
        n: {"a_scale": [], "a_zp": [], "w_scale": [], "w_zp": []} for n in quant_layers(model)}
    for method in strategies:
        calibrate_active(model, inputs, (method, method), easyquant_steps=easyquant_steps,
                         easyquant_rounds=easyquant_rounds)
        for name, layer in quant_layers(model).items():
            cfg = layer.layer_config()
            s, z = layer.aq.qparams(cfg.activation)
            out[name]["a_scale"].append(s.detach().abs().clone())
            out[name]["a_zp"].append(None if z is None else z.detach().clone())
            s, z = layer.wq.qparams(cfg.weight)
            out[name]["w_scale"].append(s.detach().abs().clone())
            out[name]["w_zp"].append(None if z is None else z.detach().clone())
    return out


def attach_mixers(model: nn.Module, cands: dict[str, dict[str, list[torch.Tensor | None]]],
                  temperature: float = 1.0) -> dict[str, Mixer]:
    """Give every quantized layer a Mixer (its forward then runs the mixture)."""
    mixers = {}
    for name, layer in quant_layers(model).items():
        layer.mixer = Mixer(layer, cands[name], temperature)  # type: ignore[attr-defined]
        mixers[name] = layer.mixer  # type: ignore[attr-defined]
    return mixers


def detach_mixers(model: nn.Module) -> None:
    """Remove the mixers: layers quantize with their own active scales again."""
    for layer in quant_layers(model).values():
        if "mixer" in layer._modules:  # type: ignore[attr-defined]
            del layer._modules["mixer"]  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SearchLog:
    """Loss trace and time of a search."""

    losses: list[float]
    seconds: float


def train_mixers_ptq(model: nn.Module, teacher: nn.Module, mixers: dict[str, Mixer], calib: ArrayData, mean: float,
                     std: float, iters: int, lr: float, batch_size: int, seed: int, ce_weight: float = 0.0
                     ) -> SearchLog:
    """PTQ: only alpha/beta learn (weights, BN and scales frozen, eval mode); loss = KL to the FP32 logits."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = [t for m in mixers.values() for t in (m.alpha, m.beta)]
    for t in params:
        t.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    model.eval()
    teacher.eval()
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    t0 = time.perf_counter()
    step = 0
    while step < iters:
        for x, y in batches(calib, batch_size, mean, std, shuffle=True, generator=gen):
            with torch.no_grad():
                t = teacher(x)
            s = model(x)
            loss = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True)
            if ce_weight > 0:
                loss = loss + ce_weight * F.cross_entropy(s, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if step >= iters:
                break
    return SearchLog(losses, time.perf_counter() - t0)


@torch.no_grad()
def choose(mixers: dict[str, Mixer], strategies: tuple[str, ...] = STRATEGIES) -> dict[str, dict[str, Any]]:
    """argmax per layer: chosen algorithms, their scales and the final p and q."""
    out = {}
    for name, m in mixers.items():
        p, q = m.probs()
        i, j = int(p.argmax()), int(q.argmax())
        out[name] = {
            "activation": strategies[i], "weight": strategies[j],
            "activation_unsigned": m.nonneg,
            "activation_scale": float(m.a_scales[i]),
            "activation_zero_point": None if m.a_zps is None else float(m.a_zps[i]),
            "weight_scale": m.w_scales[j].tolist(),
            "weight_zero_point": None if m.w_zps is None else m.w_zps[j].tolist(),
            "p": [round(float(v), 6) for v in p], "q": [round(float(v), 6) for v in q],
        }
    return out


def apply_strategy(model: nn.Module, layers: dict[str, dict[str, Any]]) -> None:
    """Write a strategy's chosen scales into the active forms of a converted model (config already set)."""
    for name, layer in quant_layers(model).items():
        st = layers[name]
        cfg = layer.layer_config()
        layer.aq.nonneg.fill_(bool(st["activation_unsigned"]))
        az = st["activation_zero_point"]
        layer.aq.set_qparams(cfg.activation, torch.tensor([st["activation_scale"]]),
                             None if az is None else torch.tensor([az]))
        wz = st["weight_zero_point"]
        layer.wq.set_qparams(cfg.weight, torch.tensor(st["weight_scale"]), None if wz is None else torch.tensor(wz))
