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


def _output_for(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """An empty output of x's exact strides (empty_like of a dense tensor), so a compiled graph can predict them;
    where the scale broadcasts x to a larger shape (calibrators' candidate grids) a contiguous one."""
    dtype = x.dtype if scale.dim() == 0 else torch.promote_types(x.dtype, scale.dtype)  # torch.mul's result type
    shape = torch.broadcast_shapes(x.shape, scale.shape)
    return torch.empty_like(x, dtype=dtype) if shape == x.shape else x.new_empty(shape, dtype=dtype)


def _forward_with_mask(x: torch.Tensor, scale: torch.Tensor, zq: torch.Tensor | None, qmin: Bound, qmax: Bound
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_q, in-range mask) in a few in-place passes (measured faster here than torch's fused CPU kernels).

    On the CPU the mask is 1.0/0.0 in x's dtype: there a comparison into bool, and torch.where on a bool mask, each
    cost 5-10x a float pass (measured: where 1.4 ms against a multiply's 0.15 ms on a [128, 16, 28, 28] gradient).
    Elsewhere it stays bool (a quarter of the memory a training step keeps per activation)."""
    r = torch.mul(x, 1.0 / scale, out=_output_for(x, scale))  # x * (1/s), as torch's kernels compute it
    if zq is not None:
        z_int = zq.floor()
        r.add_(zq - z_int).round_().add_(z_int)
    else:
        r.round_()
    q = torch.clamp(r, qmin, qmax, out=torch.empty_like(r))  # type: ignore[arg-type]  # both ints or both tensors
    if x.device.type != "cpu":
        mask = q == r
    elif torch.compiler.is_compiling():
        mask = (q == r).to(q.dtype)
    else:
        mask = torch.eq(q, r, out=torch.empty_like(r))
    if zq is not None:
        q.sub_(zq)
    return q.mul_(scale), mask


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape and the same strides in every dimension of size > 1 (where strides matter)."""
    return a.shape == b.shape and all(sa == sb for sa, sb, n in zip(a.stride(), b.stride(), a.shape, strict=True)
                                      if n > 1)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """`t`'s elements as a 1-D view in memory order when it is dense channels-last (what inductor hands a conv's
    neighbours), else in logical order (a view when contiguous)."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)
    return t.reshape(-1)


def _reduce(t: torch.Tensor, other: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """sum(t * other) reduced to `shape` (a dot product when shape is a scalar: no temporary)."""
    if math.prod(shape) == 1:
        if _same_layout(t, other):  # both read in the same (memory) order
            return torch.dot(_flat(t), _flat(other)).reshape(shape)
        return torch.dot(t.reshape(-1), other.reshape(-1)).reshape(shape)  # both in logical order
    return (t * other).sum_to_size(shape)


def _backward(grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor,
              has_zp: bool, need_s: bool = True, need_z: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(grad x, grad scale or None, grad zq or None): STE for x, LSQ for the scale, LSQ+ for the zero point.

    A float mask multiplies (an inf/NaN gradient at a clipped element becomes NaN, not 0: a non-finite gradient
    stops training anyway); a bool mask selects."""
    if mask.dtype == torch.bool:
        grad_in = torch.where(mask, grad, 0.0)
    else:
        if not _same_layout(grad, mask):  # the saved tensors' layout, so the product below is elementwise
            grad = torch.empty_like(mask).copy_(grad)
        grad_in = torch.mul(grad, mask, out=torch.empty_like(mask))
    grad_s = grad_z = None
    if need_s:
        # d x_q / d s with round as identity: in range (q - zq) - x/s = (x_q - x)/s; clipped x_q/s
        grad_s = (_reduce(grad, out, scale.shape) - _reduce(grad_in, x, scale.shape)) / scale
    if has_zp and need_z:
        # d x_q / d zq: 0 in range, -s where clipped
        if math.prod(scale.shape) == 1:
            grad_z = -(grad.sum() - grad_in.sum()).reshape(scale.shape) * scale
        else:
            grad_z = -(grad - grad_in).sum_to_size(scale.shape) * scale
    return grad_in, grad_s, grad_z


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
        grad_in, grad_s, grad_z = _backward(grad, x, out, mask, scale, ctx.has_zp, ctx.needs_input_grad[1],
                                            ctx.needs_input_grad[2])
        return grad_in if ctx.needs_input_grad[0] else None, grad_s, grad_z, None, None


# devices where a compiled graph calls the op below instead of tracing _FakeQuant (CUDA traces it: inductor fuses
# its passes into a few triton kernels there)
OPAQUE_DEVICES = frozenset({"cpu"})


# Under torch.compile on CPU the op stays opaque: inductor fused its recomputed forward into BN's backward
# reductions and ran the W4A4 step 2.5x a compiled FP32 step, slower than eager (measured, quant_overhead.json);
# these eager passes inside a compiled graph are faster. The bounds are 0-d tensors (read from the quantizer's
# qcode, so a new bit-width does not recompile); reading a CPU tensor is no device sync.
# flexible_layout: inductor hands the op its tensors in the layout it chose (channels-last around convs) instead of
# transposing four activation-sized tensors per call; the fake kernels give the outputs the layout the passes do.
@torch.library.custom_op("quantsearch::fake_quant", mutates_args=(), device_types="cpu",
                         tags=(torch.Tag.flexible_layout,))
def _fake_quant_op(x: torch.Tensor, scale: torch.Tensor, zq: torch.Tensor | None, qmin: torch.Tensor,
                   qmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward_with_mask(x, scale, zq, int(qmin), int(qmax))


@_fake_quant_op.register_fake
def _(x: torch.Tensor, scale: torch.Tensor, zq: torch.Tensor | None, qmin: torch.Tensor, qmax: torch.Tensor
      ) -> tuple[torch.Tensor, torch.Tensor]:
    out = _output_for(x, scale)
    return out, torch.empty_like(out)


@torch.library.custom_op("quantsearch::fake_quant_backward", mutates_args=(), device_types="cpu",
                         tags=(torch.Tag.flexible_layout,))
def _fake_quant_backward_op(grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor, mask: torch.Tensor,
                            scale: torch.Tensor, has_zp: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_in, grad_s, grad_z = _backward(grad, x, out, mask, scale, has_zp)
    assert grad_s is not None
    return grad_in, grad_s, torch.zeros_like(scale) if grad_z is None else grad_z


@_fake_quant_backward_op.register_fake
def _(grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor,
      has_zp: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.empty_like(mask), torch.empty_like(scale), torch.empty_like(scale)


def _op_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, scale, zq, _, _ = inputs
    ctx.save_for_backward(x, output[0], output[1], scale)
    ctx.has_zp = zq is not None


def _op_backward(ctx: Any, grad: torch.Tensor, _grad_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    x, out, mask, scale = ctx.saved_tensors
    grad_in, grad_s, grad_z = _fake_quant_backward_op(grad, x, out, mask, scale, ctx.has_zp)
    return grad_in, grad_s, grad_z if ctx.has_zp else None, None, None


_fake_quant_op.register_autograd(_op_backward, setup_context=_op_setup)


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, qmin: Bound, qmax: Bound
               ) -> torch.Tensor:
    """Fake-quantize `x`; `scale` (> 0) and `zero_point` (grid units, real-valued) broadcast against x, e.g.
    [C, 1, 1, 1] per channel."""
    zq = None if zero_point is None else zero_point.expand_as(scale)
    if torch.compiler.is_compiling() and x.device.type in OPAQUE_DEVICES:
        bounds = [b if isinstance(b, torch.Tensor) else torch.tensor(b, dtype=x.dtype) for b in (qmin, qmax)]
        out: torch.Tensor = _fake_quant_op(x, scale, zq, bounds[0], bounds[1])[0]
        return out
    out = _FakeQuant.apply(x, scale, zq, qmin, qmax)
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
