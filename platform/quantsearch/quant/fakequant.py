"""Fake quantization with a straight-through round and LSQ/LSQ+ gradients for scale and offset.

    q   = clamp(round(x / s + z), qmin, qmax)  (z: zero point in grid units, real-valued, any sign)
    x_q = (q - z) * s                          (LSQ+ offset beta = -z * s; symmetric forms: z = 0)

The zero point is learnable and real-valued (rounded to the integer grid only where a deployed runtime
needs an integer: export, strategy files) and may lie outside [qmin, qmax], so a negatively centred tensor
keeps its negative offset (the EQ-Net release's abs() forbade it). For an integer z the forward equals
torch.fake_quantize_per_{tensor,channel}_affine bit for bit (round(x/s) + z, as torch computes it: the
fractional part of z is added before the round, the integer part after); the backward reuses the clip mask
saved by the forward. `qmin`/`qmax` may be Python ints or 0-d tensors (a compiled graph reads them from a buffer,
so a new bit-width does not recompile).
"""

from __future__ import annotations

import math
from typing import Any

import torch

Bound = int | torch.Tensor  # a grid bound: a Python int, or a 0-d tensor of x's dtype


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round with a straight-through gradient (d round(u)/du = 1)."""
    return (x.round() - x).detach() + x


def grad_scale(t: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """Identity forward; gradient multiplied by `factor` (LSQ's step-size gradient scale)."""
    scaled = t * factor
    return (t - scaled).detach() + scaled


def lsq_grad_factor(n_per_scale: int, qmax: int) -> float:
    """LSQ gradient scale 1/sqrt(n * qmax), n = number of elements that share one scale."""
    return 1.0 / math.sqrt(max(n_per_scale, 1) * max(qmax, 1))


def _forward_with_mask(x: torch.Tensor, scale: torch.Tensor, zq: torch.Tensor | None, qmin: Bound, qmax: Bound
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_q, in-range mask) in a few in-place passes (measured faster here than torch's fused CPU kernels)."""
    r = torch.mul(x, 1.0 / scale)  # x * (1/s), as torch's kernels compute it, so results match bit for bit
    if zq is not None:
        z_int = zq.floor()
        r.add_(zq - z_int).round_().add_(z_int)
    else:
        r.round_()
    q = torch.clamp(r, qmin, qmax)  # type: ignore[arg-type]  # both ints or both tensors
    mask = q == r
    if zq is not None:
        q.sub_(zq)
    return q.mul_(scale), mask


def _reduce(t: torch.Tensor, other: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """sum(t * other) reduced to `shape` (a dot product when shape is a scalar: no temporary)."""
    if math.prod(shape) == 1:
        return torch.dot(t.reshape(-1), other.reshape(-1)).reshape(shape)
    return (t * other).sum_to_size(shape)


class _FakeQuant(torch.autograd.Function):
    """STE for x (zero where clipped), LSQ for the scale, LSQ+ for the (real) zero point."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, zq: torch.Tensor | None, qmin: Bound,
                qmax: Bound) -> torch.Tensor:
        out, mask = _forward_with_mask(x, scale, zq, qmin, qmax)
        ctx.save_for_backward(x, out, mask, scale)
        ctx.has_zp = zq is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, out, mask, scale = ctx.saved_tensors
        grad = grad.contiguous()
        grad_in = torch.where(mask, grad, 0.0)  # one pass; grad * mask would first cast the mask
        grad_s = grad_z = None
        if ctx.needs_input_grad[1]:
            # d x_q / d s with round as identity: in range (q - zq) - x/s = (x_q - x)/s; clipped x_q/s
            grad_s = (_reduce(grad, out, scale.shape) - _reduce(grad_in, x, scale.shape)) / scale
        if ctx.has_zp and ctx.needs_input_grad[2]:
            # d x_q / d zq: 0 in range, -s where clipped
            if math.prod(scale.shape) == 1:
                grad_z = -(grad.sum() - grad_in.sum()).reshape(scale.shape) * scale
            else:
                grad_z = -(grad - grad_in).sum_to_size(scale.shape) * scale
        return grad_in if ctx.needs_input_grad[0] else None, grad_s, grad_z, None, None


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, qmin: Bound, qmax: Bound
               ) -> torch.Tensor:
    """Fake-quantize `x`; `scale` (> 0) and `zero_point` (grid units, real-valued) broadcast against x, e.g.
    [C, 1, 1, 1] per channel."""
    zq = None if zero_point is None else zero_point.expand_as(scale)
    out: torch.Tensor = _FakeQuant.apply(x, scale, zq, qmin, qmax)
    return out


def fake_quant_reference(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, qmin: int,
                         qmax: int) -> torch.Tensor:
    """The same maths with autograd ops only; tests check fake_quant against it.

    The clip mask is inclusive on the rounded value, as in torch's fake_quantize backward (torch.clamp's own
    gradient is zero at the bounds, so it is not used for the mask).
    """
    zq: torch.Tensor | float = 0.0 if zero_point is None else zero_point
    z_int = zq.detach().floor() if isinstance(zq, torch.Tensor) else 0.0
    r = round_ste(x * (1.0 / scale) + (zq - z_int)) + z_int
    inside = (r.detach() >= qmin) & (r.detach() <= qmax)
    q = torch.where(inside, r, torch.clamp(r.detach(), qmin, qmax))
    return (q - zq) * scale
