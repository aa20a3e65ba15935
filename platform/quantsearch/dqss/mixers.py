"""DQSS mixers: the candidates' scales for each layer, and the mixture modules that stand in for a layer's
quantizers while DQSS searches (alpha over an input tensor's candidates, beta over a weight's)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from quantsearch.device import model_device
from quantsearch.dqss.mixed import mix_quant
from quantsearch.quant.calibrate import calibrate_active
from quantsearch.quant.convert import quant_layers
from quantsearch.quant.fakequant import grad_scale, lsq_grad_factor
from quantsearch.quant.forms import QuantForm, grid_for

# per layer: "a_scale", "a_zp", "w_scale", "w_zp" -> one tensor (or None: symmetric) per candidate
Candidates = dict[str, dict[str, list[torch.Tensor | None]]]


class ActMix(nn.Module):
    """alpha over one activation tensor's scale candidates; shared by every layer that reads that tensor."""

    zps: torch.Tensor | None

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

    zps: torch.Tensor | None

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


@dataclass(frozen=True)
class Mixer:
    """A quantized layer's strategy mixture while DQSS runs: its input quantizer is swapped for `act` (an ActMix,
    shared by the layers reading one tensor) and its weight quantizer for `weight`; `replaced` holds the
    (input, weight) quantizers they stand in for, put back by `detach_mixers`."""

    act: ActMix
    weight: WeightMix
    group: str  # the first layer reading the same input tensor (itself when not shared)
    replaced: tuple[nn.Module, nn.Module]

    def probs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(p, q) = softmax(alpha/T), softmax(beta/T)."""
        return self.act.probs(), self.weight.probs()


def candidate_scales(model: nn.Module, inputs: list[torch.Tensor], candidates: tuple[str, ...],
                     easyquant_steps: int = 100, easyquant_rounds: int = 2) -> Candidates:
    """Per layer, the active forms' scales (and zero points) each candidate calibrator sets on `inputs`."""
    out: Candidates = {n: {"a_scale": [], "a_zp": [], "w_scale": [], "w_zp": []} for n in quant_layers(model)}
    for method in candidates:
        calibrate_active(model, inputs, (method, method), easyquant_steps=easyquant_steps,
                         easyquant_rounds=easyquant_rounds)
        for name, layer in quant_layers(model).items():
            cfg = layer.layer_config()
            assert cfg is not None  # calibrate_active refused layers without one
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

    def hook(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
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


def attach_mixers(model: nn.Module, cands: Candidates, temperature: float = 1.0,
                  groups: dict[str, str] | None = None) -> dict[str, Mixer]:
    """Swap every quantized layer's input and weight quantizers for mixtures of the candidates' scales (its
    forward then runs x~ = sum_i p_i Q(x; s_i), W~ = sum_j q_j Q(W; t_j), one convolution).

    Layers in one group (same input tensor, same activation form) share ONE ActMix: one alpha and the group
    leader's activation candidates, so the tensor is quantized once, as a deployed graph would.
    """
    mixers: dict[str, Mixer] = {}
    for name, layer in quant_layers(model).items():
        cfg = layer.layer_config()
        if cfg is None:
            raise ValueError(f"layer {name} has no active config; set one before attaching mixers")
        lead = (groups or {}).get(name, name)
        if lead != name and lead in mixers and mixers[lead].act.form == cfg.activation:
            act = mixers[lead].act
        else:
            lead = name
            c = cands[name]
            act = ActMix(cfg.activation, layer.aq.nonneg, c["a_scale"], c["a_zp"], temperature)
        c = cands[name]
        weight = WeightMix(cfg.weight, c["w_scale"], c["w_zp"], temperature).to(layer.weight.device)
        replaced = layer.swap_quantizers(act.to(layer.weight.device), weight)
        mixers[name] = Mixer(act, weight, lead, replaced)
    return mixers


@dataclass(frozen=True)
class Anneal:
    """The mixtures' softmax temperature per step: `start` for the first `begin` of `steps` (alpha/beta learn
    their preferences), then geometric down to `end` at `frac` of the steps, then `end`. Ending cold makes the
    mixture the loss trains close to the argmax that deploys."""

    start: float
    end: float
    steps: int
    begin: float = 0.5
    frac: float = 0.9

    def at(self, step: int) -> float:
        """T at optimizer step `step` (0-based)."""
        lo, hi = self.begin * self.steps, self.frac * self.steps
        t = min(1.0, max(0.0, (step - lo) / max(1.0, hi - lo)))
        return float(self.start * (self.end / self.start) ** t)

    def apply(self, mixers: dict[str, Mixer], step: int) -> None:
        """Set every mixture's temperature for step `step`."""
        t = self.at(step)
        for m in mixers.values():
            m.act.temperature = t
            m.weight.temperature = t


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


def detach_mixers(model: nn.Module, mixers: dict[str, Mixer]) -> None:
    """Put back the quantizers the mixers replaced: layers quantize with their own active scales again."""
    layers = quant_layers(model)
    for name, m in mixers.items():
        layers[name].swap_quantizers(*m.replaced)
