"""Mixed-strategy quantization (DQSS): x~ = sum_i p_i Q(x; s_i), W~ = sum_j q_j Q(W; t_j), y = layer(x~, W~).

ONE convolution per layer, exactly equal to the naive sum of N^2 convolutions sum_ij p_i q_j conv(Q_i(x), Q_j(W))
because convolution is bilinear and sum(p) = sum(q) = 1. The mixture is a custom autograd function that saves
x, p and the candidate scales and recomputes the N branches in backward instead of keeping N copies of x.
In QAT the candidate scales learn too (LSQ gradient per branch, weighted by p_i).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from quantsearch.quant.fakequant import _reduce


def _codes(x: torch.Tensor, scales: torch.Tensor, zps: torch.Tensor | None, qmin: int, qmax: int,
           shape: tuple[int, ...], need_mask: bool = True
           ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]]:
    """Per candidate i: (s_i, z_i, q_i, mask_i as 0./1.) with q_i = clamp(round(x/s_i) + z_i, qmin, qmax) on the integer
    grid (Q_i(x) = (q_i - z_i) * s_i), as fakequant._forward_with_mask computes it. All branches share ONE set
    of work buffers (each yield is overwritten by the next): fresh multi-MB buffers cost page faults that made
    a branch ~3x slower than its arithmetic here."""
    r = torch.empty_like(x)
    q = torch.empty_like(x)
    # the mask is kept as 0./1. floats: converting a bool mask for the accumulation cost more than the compare
    mask = torch.empty_like(x) if need_mask else None
    for i in range(scales.shape[0]):
        s = scales[i].reshape(shape)
        z = None if zps is None else zps[i].reshape(shape)
        torch.mul(x, 1.0 / s, out=r)
        r.round_()
        if z is not None:
            r.add_(z)
        torch.clamp(r, qmin, qmax, out=q)
        if mask is not None:
            torch.eq(q, r, out=mask)
        yield s, z, q, mask


def _dequant_(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    """(q - z) * s, in place."""
    if z is not None:
        q.sub_(z)
    return q.mul_(s)


class _Mixture(torch.autograd.Function):
    """sum_i p_i Q_i(x) with candidate scales; gradients for x (STE per branch), p and (QAT) the scales.

    Per-tensor scales take a shortcut: sum_i p_i (q_i - z_i) s_i = sum_i (p_i s_i) q_i - sum_i p_i s_i z_i, and
    <g, Q_i(x)> = s_i (<g, q_i> - z_i sum(g)), which skips two passes over x per branch."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: torch.Tensor, scales: torch.Tensor, zps: torch.Tensor | None,
                qmin: int, qmax: int, shape: tuple[int, ...]) -> torch.Tensor:
        out = torch.zeros_like(x)
        offset = None
        # the weights p_i stay on the device (addcmul with a 0-d tensor): no host sync in the forward
        for i, (s, z, q, _) in enumerate(_codes(x, scales, zps, qmin, qmax, shape, need_mask=False)):
            if s.dim() == 0:
                out.addcmul_(q, p[i] * s)
                if z is not None:
                    offset = p[i] * s * z if offset is None else offset + p[i] * s * z
            else:
                out.addcmul_(_dequant_(q, s, z), p[i])
        if offset is not None:
            out.sub_(offset)
        ctx.save_for_backward(x, p, scales, zps if zps is not None else torch.empty(0))
        ctx.meta = (qmin, qmax, shape, zps is not None)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, p, scales, zps = ctx.saved_tensors
        qmin, qmax, shape, has_zp = ctx.meta
        grad = grad.contiguous()
        # d x~/d x = sum_i p_i 1[x in range i]: accumulate that weight, multiply by grad once at the end
        weight = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        grad_s = torch.zeros_like(scales) if ctx.needs_input_grad[2] else None
        grad_p = torch.zeros_like(p)
        flat_g = grad.reshape(-1)
        g_sum = flat_g.sum() if has_zp else None
        for i, (s, z, q, mask) in enumerate(_codes(x, scales, zps if has_zp else None, qmin, qmax, shape)):
            assert mask is not None  # _codes computes it unless told not to
            if weight is not None:
                weight.addcmul_(mask, p[i])
            if s.dim() == 0 and grad_s is None:
                dot = torch.dot(flat_g, q.reshape(-1))
                grad_p[i] = s * dot if z is None else s * (dot - z * cast(torch.Tensor, g_sum))
                continue
            xq = _dequant_(q, s, z)
            grad_p[i] = torch.dot(flat_g, xq.reshape(-1))
            if grad_s is not None:
                # LSQ: d x_q/d s = (x_q - x)/s in range, x_q/s where clipped (as in fakequant._FakeQuant)
                grad_in = grad * mask
                g_s = (_reduce(grad, xq, s.shape) - _reduce(grad_in, x, s.shape)) / s
                grad_s[i] = p[i] * g_s.reshape(scales[i].shape)
        grad_x = weight.mul_(grad) if weight is not None else None
        return grad_x, grad_p, grad_s, None, None, None, None


def mix_quant(x: torch.Tensor, p: torch.Tensor, scales: torch.Tensor, zps: torch.Tensor | None, qmin: int,
              qmax: int, per_channel: bool) -> torch.Tensor:
    """sum_i p_i Q(x; scales[i], zps[i]); scales is [N] (per-tensor) or [N, C] (per channel along dim 0)."""
    shape = ((-1,) + (1,) * (x.dim() - 1)) if per_channel else ()
    out: torch.Tensor = _Mixture.apply(x, p, scales, zps, qmin, qmax, shape)
    return out


def naive_mixed_forward(layer: nn.Conv2d | nn.Linear, x: torch.Tensor, p: torch.Tensor, q: torch.Tensor,
                        a_scales: torch.Tensor, a_zps: torch.Tensor | None, a_range: tuple[int, int],
                        w_scales: torch.Tensor, w_zps: torch.Tensor | None, w_range: tuple[int, int],
                        w_per_channel: bool) -> torch.Tensor:
    """The reference: N^2 convolutions with plain autograd (tests compare the efficient layer with it)."""
    from quantsearch.quant.fakequant import fake_quant

    wshape = ((-1,) + (1,) * (layer.weight.dim() - 1)) if w_per_channel else ()
    out = None
    for i in range(len(p)):
        xi = fake_quant(x, a_scales[i].reshape(()), None if a_zps is None else a_zps[i].reshape(()), *a_range)
        for j in range(len(q)):
            wj = fake_quant(layer.weight, w_scales[j].reshape(wshape),
                            None if w_zps is None else w_zps[j].reshape(wshape), *w_range)
            y = layer._conv_forward(xi, wj, None) if isinstance(layer, nn.Conv2d) else F.linear(xi, wj)
            term = p[i] * q[j] * y
            out = term if out is None else out + term
    assert out is not None
    if layer.bias is not None:
        out = out + (layer.bias.reshape(1, -1, *([1] * (out.dim() - 2))) if out.dim() > 2 else layer.bias)
    return out
