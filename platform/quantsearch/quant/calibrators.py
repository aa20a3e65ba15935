"""Calibrators: turn observed values into a scale (and offset) for a form.

Every calibrator answers `scale_offset(x, form, nonneg, kind)`: x is the tensor to quantize (weights: [C_out, ...];
activations: a flat sample of observed values); kind is "weight" or "activation" (None: weight when per-channel).
Constants are created on x's device. It returns scale [C] or [1] and zero point (grid units,
real) of the same shape, or None for symmetric forms. quant/registry.py names them (and EasyQuant, which
searches a layer's output rather than one tensor).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from quantsearch.quant.fakequant import fake_quant
from quantsearch.quant.forms import QuantForm, grid_for

EPS = 1e-8


def _rows(x: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """View x as [rows, elements]: one row per channel, or one row."""
    x = x.detach().float()
    return x.reshape(x.shape[0], -1) if per_channel else x.reshape(1, -1)


def range_to_qparams(lo: torch.Tensor, hi: torch.Tensor, form: QuantForm, nonneg: bool
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale/zero point from a clip range: symmetric uses max(|lo|, |hi|); affine maps [lo, hi] onto the grid."""
    qmin, qmax = grid_for(form, nonneg)
    if form.symmetric:
        t = torch.maximum(lo.abs(), hi.abs()) if not nonneg else hi.clamp_min(0)
        return (t / qmax).clamp_min(EPS), None
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(EPS)
    return scale, qmin - lo / scale


def tensor_kind(form: QuantForm, kind: str | None) -> str:
    """'weight' or 'activation'; None means weight for per-channel forms (activations are per-tensor)."""
    if kind is None:
        return "weight" if form.per_channel else "activation"
    if kind not in ("weight", "activation"):
        raise ValueError(f"kind must be 'weight' or 'activation', got {kind!r}")
    return kind


class Calibrator(ABC):
    """Computes quantization parameters for a tensor in a given form."""

    name: str = "base"

    @abstractmethod
    def scale_offset(self, x: torch.Tensor, form: QuantForm, nonneg: bool = False, kind: str | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (scale, zero_point or None), each of shape [C] (per-channel) or [1]."""


class MaxAbsCalibrator(Calibrator):
    """Clip at the observed extremes: max|x| (symmetric) or [min, max] (affine), per channel for weights."""

    name = "maxabs"

    def scale_offset(self, x: torch.Tensor, form: QuantForm, nonneg: bool = False, kind: str | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """MaxAbs scale (and affine offset)."""
        rows = _rows(x, form.per_channel)
        return range_to_qparams(rows.amin(1).clamp_max(0), rows.amax(1).clamp_min(0), form, nonneg)


class MSECalibrator(Calibrator):
    """Search the clip range max*(1 - 0.01 i), i < steps, minimising mean |x - Q(x)|^p (EQ-Net's init)."""

    name = "mse"

    def __init__(self, steps: int = 80, p: float = 2.0, max_elements: int = 1 << 16) -> None:
        self.steps, self.p, self.max_elements = steps, p, max_elements

    def scale_offset(self, x: torch.Tensor, form: QuantForm, nonneg: bool = False, kind: str | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Best clip range by grid search, vectorised over channels."""
        rows = _rows(x, form.per_channel)
        lo, hi = rows.amin(1).clamp_max(0), rows.amax(1).clamp_min(0)
        per_row = max(self.max_elements // rows.shape[0], 64)
        if rows.shape[1] > per_row:  # the error is estimated on a deterministic strided sample
            rows = rows[:, :: -(-rows.shape[1] // per_row)]
        qmin, qmax = grid_for(form, nonneg)
        alphas = 1.0 - 0.01 * torch.arange(self.steps, dtype=rows.dtype, device=rows.device)  # [K]: all at once
        s, z = range_to_qparams(lo[None] * alphas[:, None], hi[None] * alphas[:, None], form, nonneg)  # [K, R]
        xq = fake_quant(rows[None], s[..., None], None if z is None else z[..., None], qmin, qmax)  # [K, R, N]
        err = (rows[None] - xq).abs().pow(self.p).mean(2)  # [K, R]
        best = err.argmin(0, keepdim=True)  # first minimum: the widest clip among equals
        scale = s.gather(0, best).squeeze(0)
        return scale, (None if z is None else z.gather(0, best).squeeze(0))


def _threshold_to_qparams(rows: torch.Tensor, t: torch.Tensor, form: QuantForm, nonneg: bool
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Symmetric threshold per row -> qparams; affine forms clip [min, max] to [-T, T]."""
    lo = torch.maximum(rows.amin(1).clamp_max(0), -t)
    hi = torch.minimum(rows.amax(1).clamp_min(0), t)
    return range_to_qparams(lo, hi, form, nonneg)


class KLCalibrator(Calibrator):
    """TensorRT entropy calibration (see quant/kl.py for the exact choices); per row for per-channel.

    Symmetric forms: the threshold T of |x| gives [-T, T]. Affine forms clip each side on its own: T+ from the
    positive values, T- from the magnitudes of the negative ones, each side given the share of the 2^b levels
    its raw extreme takes of the whole range. Folding both signs into |x| let a spike on the negative side (an
    image's background after normalisation) drag T below it (83 % top-1 for a W8A8 ResNet whose other
    calibrators reach 92 %); measuring the span from the minimum instead collapsed a MobileNet whose
    bottleneck outputs have a far negative outlier (10 %).

    A row with fewer than MIN_PER_LEVEL values per quantization level keeps its whole range (MaxAbs): a histogram of
    a depthwise 3x3 kernel's 9 weights says nothing about a distribution, and KL on it clipped the largest weights of
    a MobileNet's depthwise layers at W4 (-7 points each). NVIDIA calibrates weights by max for the same reason.
    """

    name = "kl"
    MIN_PER_LEVEL = 16

    def scale_offset(self, x: torch.Tensor, form: QuantForm, nonneg: bool = False, kind: str | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """KL-optimal clip per row."""
        import math

        from quantsearch.quant.kl import abs_histogram, kl_threshold

        rows = _rows(x, form.per_channel)
        levels = 2**form.bits if (nonneg or not form.symmetric) else 2 ** (form.bits - 1)
        # 2048 bins for large tensors; a row of a few hundred weights gets the next power of two above its
        # size (at least 4 bins per level), as finer bins would be empty and the [cuts x bins] batch grows as bins^2
        bins = min(2048, max(4 * levels, 2 ** math.ceil(math.log2(max(rows.shape[1], 2)))))
        lo_raw, hi_raw = rows.amin(1).clamp_max(0), rows.amax(1).clamp_min(0)
        if rows.shape[1] < self.MIN_PER_LEVEL * levels:  # too few values for a histogram: the whole range
            if form.symmetric:
                return _threshold_to_qparams(rows, rows.abs().amax(1), form, nonneg)
            return range_to_qparams(lo_raw, hi_raw, form, nonneg)
        if form.symmetric:
            ts = [kl_threshold(*abs_histogram(r, bins=bins), levels) for r in rows]
            return _threshold_to_qparams(rows, torch.tensor(ts, dtype=rows.dtype, device=rows.device), form, nonneg)
        los, his = [], []
        for r, lo, hi in zip(rows, lo_raw.tolist(), hi_raw.tolist(), strict=True):
            span = hi - lo
            sides = []
            for side, extreme in ((r.clamp_min(0), hi), ((-r).clamp_min(0), -lo)):
                if extreme <= 0:
                    sides.append(0.0)
                    continue
                side_levels = max(2, round(levels * extreme / span))
                sides.append(min(kl_threshold(*abs_histogram(side, bins=bins), side_levels), extreme))
            his.append(sides[0])
            los.append(-sides[1])
        return range_to_qparams(torch.tensor(los, dtype=rows.dtype, device=rows.device),
                                torch.tensor(his, dtype=rows.dtype, device=rows.device), form, nonneg)


class ADMMCalibrator(Calibrator):
    """The projection step of ADMM quantization (Leng et al.): alternate q = clamp(round(x/a)) and
    a = <q, x>/<q, q> from a = max|x|/(qmax * c) until a changes < tol; a local MSE minimum."""

    name = "admm"

    def __init__(self, c: float | None = None, iters: int | None = None, tol: float = 1e-6,
                 max_elements: int = 1 << 18) -> None:
        self.c, self.iters, self.tol, self.max_elements = c, iters, tol, max_elements

    def scale_offset(self, x: torch.Tensor, form: QuantForm, nonneg: bool = False, kind: str | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Alternating projection per row (vectorised over rows); affine forms clip [min, max] to [-T, T]."""
        rows = _rows(x, form.per_channel)
        weight_like = tensor_kind(form, kind) == "weight"  # per-tensor weights too (not the activation constants)
        c = self.c if self.c is not None else (1.25 if weight_like else 2.5)
        iters = self.iters if self.iters is not None else (1000 if weight_like else 300)
        per_row = max(self.max_elements // rows.shape[0], 64)
        sample = rows[:, :: -(-rows.shape[1] // per_row)] if rows.shape[1] > per_row else rows
        qmin, qmax = grid_for(QuantForm(form.bits, form.granularity, True), nonneg)
        amax = sample.abs().amax(1)
        a = (amax / (qmax * c)).clamp_min(EPS)
        for _ in range(iters):
            q = torch.clamp(torch.round(sample / a[:, None]), qmin, qmax)
            qq = (q * q).sum(1)
            new = torch.where(qq > 0, (q * sample).sum(1) / qq.clamp_min(EPS), a).clamp_min(EPS)
            done = bool(((new - a).abs() <= self.tol * a.clamp_min(EPS)).all())
            a = new
            if done:
                break
        return _threshold_to_qparams(rows, a * qmax, form, nonneg)
