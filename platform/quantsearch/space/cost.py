"""Cost model: per-layer MACs from one traced forward; BitOps, weight bytes, activation bytes of a subnet."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from quantsearch.quant.convert import quant_layers
from quantsearch.space.subnet import SubnetConfig

FLOAT_BITS = 32


@dataclass(frozen=True)
class LayerCost:
    """Static shape facts of one quantized layer for a single input sample."""

    name: str
    macs: int
    params: int
    in_numel: int
    out_numel: int


@dataclass(frozen=True)
class Cost:
    """A subnet's cost: BitOps = sum MACs*b_w*b_a; bytes of weights; peak and total input-activation bytes."""

    bitops: float
    weight_bytes: float
    act_bytes_peak: float
    act_bytes_total: float
    macs: int


def layer_costs(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerCost]:
    """Trace one forward (batch 1) and record each quantized layer's MACs, params and tensor sizes."""
    layers = quant_layers(model)
    found: dict[str, LayerCost] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def fn(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            x = inp[0]
            if isinstance(m, nn.Conv2d):
                k = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
                macs = out[0].numel() * k
            elif isinstance(m, nn.Linear):
                macs = m.in_features * m.out_features * (x[0].numel() // m.in_features)
            else:
                raise TypeError(f"{name} is not a conv or linear layer")
            found[name] = LayerCost(name, int(macs), int(m.weight.numel()), int(x[0].numel()), int(out[0].numel()))
        return fn

    handles = [layer.register_forward_hook(hook(n)) for n, layer in layers.items()]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            param = next(model.parameters())
            model(torch.zeros((1, *input_shape), dtype=param.dtype, device=param.device))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return [found[n] for n in layers if n in found]


def subnet_cost(costs: list[LayerCost], config: SubnetConfig | None) -> Cost:
    """Cost of `config` (None: every layer in float, 32 bits)."""
    bitops = wbytes = peak = total = 0.0
    macs = 0
    for lc in costs:
        if config is None:
            bw = ba = FLOAT_BITS
        else:
            bw, ba = config[lc.name].weight.bits, config[lc.name].activation.bits
        bitops += lc.macs * bw * ba
        wbytes += lc.params * bw / 8
        act = lc.in_numel * ba / 8
        peak = max(peak, act)
        total += act
        macs += lc.macs
    return Cost(bitops, wbytes, peak, total, macs)
