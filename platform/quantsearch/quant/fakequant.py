"""Fake quantization with a straight-through round and LSQ/LSQ+ gradients for scale and offset.

    q   = clamp(round_ste(x / s + zp), qmin, qmax)
    x_q = (q - zp) * s              (offset z = -zp * s; zp is real, may be negative; symmetric: zp = 0)

For an integer zp this equals torch.fake_quantize_per_{tensor,channel}_affine bit for bit: the integer
part of zp is added after rounding, as torch's kernel does.
"""

from __future__ import annotations

import math

import torch


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round with a straight-through gradient (d round(u)/du = 1)."""
    return (x.round() - x).detach() + x


def grad_scale(t: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward; gradient multiplied by `factor` (LSQ's step-size gradient scale)."""
    scaled = t * factor
    return (t - scaled).detach() + scaled


def lsq_grad_factor(n_per_scale: int, qmax: int) -> float:
    """LSQ gradient scale 1/sqrt(n * qmax), n = number of elements that share one scale."""
    return 1.0 / math.sqrt(max(n_per_scale, 1) * max(qmax, 1))


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, qmin: int, qmax: int
               ) -> torch.Tensor:
    """Fake-quantize `x`; `scale`/`zero_point` broadcast against x (e.g. [C,1,1,1] per channel)."""
    inv = 1.0 / scale
    u = x * inv
    if zero_point is None:
        q = torch.clamp(round_ste(u), qmin, qmax)
        return q * scale
    zi = torch.floor(zero_point).detach()
    q = torch.clamp(round_ste(u + (zero_point - zi)) + zi, qmin, qmax)
    return (q - zero_point) * scale
