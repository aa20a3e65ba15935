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
from quantsearch.device import model_device
from quantsearch.dqss.mixed import mix_quant
from quantsearch.quant.convert import quant_layers
from quantsearch.quant.fakequant import grad_scale, lsq_grad_factor
from quantsearch.quant.forms import QuantForm, grid_for
from quantsearch.quant.methods import calibrate_active

STRATEGIES = ("maxabs", "kl", "easyquant", "admm")


class ActMix(nn.Module):
    """alpha over one activation tensor's scale candidates; shared by every layer that reads that tensor."""

    def __init__(self, form: QuantForm, nonneg: bool, scales: list[torch.Tensor | None],
                 zps: list[torch.Tensor | None], temperature: float) -> None:
        super().__init__()
        self.form, self.nonneg, self.temperature = form, nonneg, temperature
        self.alpha = nn.Parameter(torch.zeros(len(scales)))
        # candidate scales are parameters so QAT can move them (LSQ); PTQ freezes them
        self.scales = nn.Parameter(torch.stack([t.reshape(()) for t in scales if t is not None]), requires_grad=False)
        # integer zero points (what the strategy file deploys), as a buffer so .to() and state_dict see them
        self.register_buffer("zps", None if form.symmetric else torch.stack(
            [t.reshape(()).round() for t in zps if t is not None]))

    def probs(self) -> torch.Tensor:
        """p = softmax(alpha / T)."""
        return F.softmax(self.alpha / self.temperature, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x~ = sum_i p_i Q(x; s_i)."""
        qmin, qmax = grid_for(self.form, self.nonneg)
        s = self.scales.abs()
        if self.scales.requires_grad:
            s = grad_scale(s, lsq_grad_factor(x[0].numel() if x.dim() > 1 else x.numel(), qmax))
        return mix_quant(x, self.probs(), s, self.zps, qmin, qmax, per_channel=False)


class WeightMix(nn.Module):
    """beta over one layer's weight scale candidates (per channel: each candidate is a [C_out] vector)."""

    def __init__(self, form: QuantForm, scales: list[torch.Tensor | None], zps: list[torch.Tensor | None],
                 temperature: float) -> None:
        super().__init__()
        self.form, self.temperature = form, temperature
        self.beta = nn.Parameter(torch.zeros(len(scales)))
        flat = [t.reshape(-1) for t in scales if t is not None]
        stacked = torch.stack(flat) if form.per_channel else torch.stack([t.reshape(()) for t in flat])
        self.scales = nn.Parameter(stacked, requires_grad=False)
        self.register_buffer("zps", None if form.symmetric else torch.stack(
            [(t.reshape(-1) if form.per_channel else t.reshape(())).round() for t in zps if t is not None]))

    def probs(self) -> torch.Tensor:
        """q = softmax(beta / T)."""
        return F.softmax(self.beta / self.temperature, 0)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """W~ = sum_j q_j Q(W; t_j)."""
        qmin, qmax = grid_for(self.form, False)
        s = self.scales.abs()
        if self.scales.requires_grad:
            s = grad_scale(s, lsq_grad_factor(w[0].numel() if self.form.per_channel else w.numel(), qmax))
        return mix_quant(w, self.probs(), s, self.zps, qmin, qmax, per_channel=self.form.per_channel)


class Mixer(nn.Module):
    """A quantized layer's strategy mixture: its (possibly shared) ActMix and its own WeightMix."""

    def __init__(self, act: ActMix, weight: WeightMix, group: str) -> None:
        super().__init__()
        self.act, self.weight = act, weight
        self.group = group  # the first layer reading the same input tensor (itself when not shared)

    def probs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(p, q) = softmax(alpha/T), softmax(beta/T)."""
        return self.act.probs(), self.weight.probs()

    def forward(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One convolution of the mixed input with the mixed weight."""
        xm, wm = self.act(x), self.weight(layer.weight)
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


@torch.no_grad()
def shared_input_groups(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """Per quantized layer, the first layer (execution order) that reads the very same input tensor."""
    seen: dict[int, str] = {}
    keep: list[torch.Tensor] = []  # hold the inputs so no id() is reused within the forward
    leader: dict[str, str] = {}

    def hook(name: str):  # noqa: ANN202
        def pre(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            keep.append(args[0])
            leader[name] = seen.setdefault(id(args[0]), name)
        return pre

    layers = quant_layers(model)
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        model(example.to(model_device(model)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: leader.get(n, n) for n in layers}


def attach_mixers(model: nn.Module, cands: dict[str, dict[str, list[torch.Tensor | None]]],
                  temperature: float = 1.0, groups: dict[str, str] | None = None) -> dict[str, Mixer]:
    """Give every quantized layer a Mixer (its forward then runs the mixture).

    Layers in one group (same input tensor, same activation form) share ONE ActMix: one alpha and the group
    leader's activation candidates, so the tensor is quantized once, as a deployed graph would.
    """
    mixers: dict[str, Mixer] = {}
    layers = quant_layers(model)
    for name, layer in layers.items():
        cfg = layer.layer_config()
        lead = (groups or {}).get(name, name)
        if lead != name and lead in mixers and mixers[lead].act.form == cfg.activation:
            act = mixers[lead].act
        else:
            lead = name
            c = cands[name]
            act = ActMix(cfg.activation, layer.aq.nonneg, c["a_scale"], c["a_zp"], temperature)
        c = cands[name]
        layer.mixer = Mixer(act, WeightMix(cfg.weight, c["w_scale"], c["w_zp"], temperature), lead)
        mixers[name] = layer.mixer
    return mixers


def mixer_params(mixers: dict[str, Mixer]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(alpha/beta, candidate scales), each shared parameter once."""
    arch: dict[int, nn.Parameter] = {}
    scales: dict[int, nn.Parameter] = {}
    for m in mixers.values():
        for t in (m.act.alpha, m.weight.beta):
            arch[id(t)] = t
        for t in (m.act.scales, m.weight.scales):
            scales[id(t)] = t
    return list(arch.values()), list(scales.values())


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
                     std: float, iters: int, lr: float, batch_size: int, seed: int, ce_weight: float = 0.0,
                     scale_lr: float = 0.0) -> SearchLog:
    """PTQ: alpha/beta learn (weights and BN frozen, eval mode), and the candidate scales too when scale_lr > 0;
    loss = KL to the FP32 logits (+ ce_weight * CE)."""
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
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    t0 = time.perf_counter()
    step = 0
    while step < iters:
        for x, y in batches(calib, batch_size, mean, std, shuffle=True, generator=gen):
            x, y = x.to(device), y.to(device)
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
        a, w = m.act, m.weight
        out[name] = {
            "activation": strategies[i], "weight": strategies[j], "activation_group": m.group,
            "activation_unsigned": a.nonneg,
            "activation_scale": float(a.scales[i].abs()),
            "activation_zero_point": None if a.zps is None else float(a.zps[i]),
            "weight_scale": w.scales[j].abs().reshape(-1).tolist(),
            "weight_zero_point": None if w.zps is None else w.zps[j].reshape(-1).tolist(),
            "p": [round(float(v), 6) for v in p], "q": [round(float(v), 6) for v in q],
        }
    return out


def share_input_quantizers(model: nn.Module, layers: dict[str, dict[str, Any]]) -> None:
    """Layers of one activation group use the group leader's input quantizer (one module), so fine-tuning
    keeps a shared tensor quantized once."""
    qlayers = quant_layers(model)
    for name, layer in qlayers.items():
        lead = layers[name].get("activation_group", name)
        if lead != name and qlayers[lead].aq.form == layer.aq.form:
            layer.aq = qlayers[lead].aq


@torch.no_grad()
def read_scales(model: nn.Module, layers: dict[str, dict[str, Any]]) -> None:
    """Refresh a strategy's scales from the model's active forms (after QAT fine-tuning moved them)."""
    for name, layer in quant_layers(model).items():
        cfg = layer.layer_config()
        s, z = layer.aq.qparams(cfg.activation)
        layers[name]["activation_scale"] = float(s.abs().reshape(()))
        layers[name]["activation_zero_point"] = None if z is None else float(z.round().reshape(()))
        s, z = layer.wq.qparams(cfg.weight)
        layers[name]["weight_scale"] = s.abs().reshape(-1).tolist()
        layers[name]["weight_zero_point"] = None if z is None else z.round().reshape(-1).tolist()


def apply_strategy(model: nn.Module, layers: dict[str, dict[str, Any]]) -> None:
    """Write a strategy's chosen scales into the active forms of a converted model (config already set)."""
    for name, layer in quant_layers(model).items():
        st = layers[name]
        cfg = layer.layer_config()
        layer.aq.nonneg = bool(st["activation_unsigned"])
        az = st["activation_zero_point"]
        layer.aq.set_qparams(cfg.activation, torch.tensor([st["activation_scale"]]),
                             None if az is None else torch.tensor([az]))
        wz = st["weight_zero_point"]
        layer.wq.set_qparams(cfg.weight, torch.tensor(st["weight_scale"]), None if wz is None else torch.tensor(wz))
