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


def _round_grid(u: torch.Tensor, zero_point: torch.Tensor | None) -> torch.Tensor:
    """round(u + zp), adding zp's integer part after rounding (bit-exact with torch for integer zp)."""
    if zero_point is None:
        return torch.round(u)
    zi = torch.floor(zero_point)
    return torch.round(u + (zero_point - zi)) + zi


def _fused_forward(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor | None:
    """torch's fused kernels for the symmetric case (zp = 0), or None when the layout does not fit them."""
    if x.dtype != torch.float32 or scale.dtype != torch.float32:
        return None
    if scale.numel() == 1:
        return torch.fake_quantize_per_tensor_affine(
            x, scale.reshape(1), torch.zeros(1, dtype=torch.int32), qmin, qmax)
    if scale.dim() == x.dim() and scale.shape[0] == x.shape[0] and scale[0].numel() == 1:
        flat = scale.reshape(-1)
        return torch.fake_quantize_per_channel_affine(
            x, flat, torch.zeros(flat.numel(), dtype=torch.int32, device=x.device), 0, qmin, qmax)
    return None


class _FakeQuant(torch.autograd.Function):
    """Forward: fused where torch has a kernel; backward: STE for x, LSQ(+) for scale and offset.

    Only x, scale and zp are saved; the rounding is recomputed in backward instead of keeping the
    intermediate tensors autograd would store.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):  # noqa: ANN001, ANN205
        out = _fused_forward(x, scale, qmin, qmax) if zero_point is None else None
        if out is None:
            q = torch.clamp(_round_grid(x * (1.0 / scale), zero_point), qmin, qmax)
            out = (q - zero_point) * scale if zero_point is not None else q * scale
        ctx.save_for_backward(x, scale, zero_point)
        ctx.qrange = (qmin, qmax)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, scale, zero_point = ctx.saved_tensors
        qmin, qmax = ctx.qrange
        u = x * (1.0 / scale)
        r = _round_grid(u, zero_point)
        inside = (r >= qmin) & (r <= qmax)
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_s = grad_z = None
        if ctx.needs_input_grad[1]:
            zp = 0.0 if zero_point is None else zero_point
            # d x_q / d s, round treated as identity: in range q - zp - x/s; clipped q - zp
            ds = torch.where(inside, r - u, torch.clamp(r, qmin, qmax)) - zp
            grad_s = (grad * ds).sum_to_size(scale.shape)
        if zero_point is not None and ctx.needs_input_grad[2]:
            grad_z = (grad * (~inside) * (-scale)).sum_to_size(zero_point.shape)
        return grad_x, grad_s, grad_z, None, None


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, qmin: int, qmax: int
               ) -> torch.Tensor:
    """Fake-quantize `x`; `scale`/`zero_point` broadcast against x (e.g. [C,1,1,1] per channel)."""
    return _FakeQuant.apply(x, scale, zero_point, qmin, qmax)


def fake_quant_reference(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, qmin: int,
                         qmax: int) -> torch.Tensor:
    """The same maths written with autograd ops only; tests check fake_quant against it.

    The clip mask is inclusive on the rounded value, as in torch's fake_quantize backward (torch.clamp's own
    gradient is zero at the bounds, so it is not used for the mask).
    """
    u = x * (1.0 / scale)
    if zero_point is None:
        r = round_ste(u)
        zp: torch.Tensor | float = 0.0
    else:
        zi = torch.floor(zero_point).detach()
        r = round_ste(u + (zero_point - zi)) + zi
        zp = zero_point
    inside = (r.detach() >= qmin) & (r.detach() <= qmax)
    q = torch.where(inside, r, torch.clamp(r.detach(), qmin, qmax))
    return (q - zp) * scale
