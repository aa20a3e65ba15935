"""Elastic quantizer: one scale/offset table per form it may take, switched by setting the active form."""

from __future__ import annotations

import torch
from torch import nn

from quantsearch.quant.calibrators import Calibrator, MSECalibrator
from quantsearch.quant.fakequant import fake_quant, grad_scale, lsq_grad_factor
from quantsearch.quant.forms import ALL_BITS, MIN_BITS, QuantForm, grid_for

_NB = len(ALL_BITS)


def _key(per_channel: bool, symmetric: bool) -> str:
    return f"{'pc' if per_channel else 'pt'}_{'sym' if symmetric else 'asym'}"


class ElasticQuantizer(nn.Module):
    """Fake-quantizes a weight (kind='weight', per-channel or per-tensor) or an input activation (per-tensor).

    Tables `scale_<g>_<s>` ([rows, 7], one column per bit-width 2..8) and `zp_<g>_asym` exist for every
    form from construction on, so optimizers and load_state_dict see them before any forward.
    """

    def __init__(self, kind: str, channels: int = 1) -> None:
        super().__init__()
        if kind not in ("weight", "activation"):
            raise ValueError("kind must be 'weight' or 'activation'")
        self.kind = kind
        self.channels = channels
        grans = (True, False) if kind == "weight" else (False,)
        for pc in grans:
            rows = channels if pc else 1
            for sym in (True, False):
                self.register_parameter(f"scale_{_key(pc, sym)}", nn.Parameter(torch.ones(rows, _NB)))
                if not sym:
                    self.register_parameter(f"zp_{_key(pc, sym)}", nn.Parameter(torch.zeros(rows, _NB)))
        # Whether the input is non-negative (unsigned grid); decided once at calibration.
        self.register_buffer("nonneg", torch.tensor(False))
        self.register_buffer("calibrated", torch.tensor(False))
        self.form: QuantForm | None = None

    def set_form(self, form: QuantForm | None) -> None:
        """Select the active form; None leaves the tensor in float."""
        if form is not None and self.kind == "activation" and form.per_channel:
            raise ValueError("activation quantizers are per-tensor")
        self.form = form

    def qparams(self, form: QuantForm) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scale, zp or None) columns of the table for `form`, shape [rows]."""
        key = _key(form.per_channel, form.symmetric)
        col = form.bits - MIN_BITS
        scale = getattr(self, f"scale_{key}")[:, col]
        zp = None if form.symmetric else getattr(self, f"zp_{key}")[:, col]
        return scale, zp

    @torch.no_grad()
    def set_qparams(self, form: QuantForm, scale: torch.Tensor, zp: torch.Tensor | None) -> None:
        """Write one form's scale (and offset) into its table column."""
        key = _key(form.per_channel, form.symmetric)
        col = form.bits - MIN_BITS
        getattr(self, f"scale_{key}")[:, col] = scale.reshape(-1).to(self.scale_pt_sym)
        if not form.symmetric and zp is not None:
            getattr(self, f"zp_{key}")[:, col] = zp.reshape(-1).to(self.scale_pt_sym)

    def all_forms(self) -> list[QuantForm]:
        """Every form this quantizer holds a table column for."""
        grans = ("per_channel", "per_tensor") if self.kind == "weight" else ("per_tensor",)
        return [QuantForm(b, g, s) for g in grans for s in (True, False) for b in ALL_BITS]

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, calibrator: Calibrator | None = None,
                  forms: list[QuantForm] | None = None) -> None:
        """Initialise every form's table column from `x` (weights, or a sample of observed inputs)."""
        calibrator = calibrator or MSECalibrator()
        if self.kind == "activation":
            self.nonneg.fill_(bool(x.min() >= 0))
        nonneg = bool(self.nonneg)
        for form in forms or self.all_forms():
            scale, zp = calibrator.scale_offset(x, form, nonneg)
            self.set_qparams(form, scale, zp)
        self.calibrated.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize with the active form (identity when none is set)."""
        form = self.form
        if form is None:
            return x
        qmin, qmax = grid_for(form, bool(self.nonneg))
        scale, zp = self.qparams(form)
        if self.kind == "weight":
            n = x[0].numel() if form.per_channel else x.numel()
        else:
            n = x[0].numel() if x.dim() > 1 else x.numel()
        g = lsq_grad_factor(n, qmax)
        scale = grad_scale(scale.abs(), g)
        if zp is not None:
            zp = grad_scale(zp, g)
        shape = (-1,) + (1,) * (x.dim() - 1) if (self.kind == "weight" and form.per_channel) else (1,) * x.dim()
        if scale.numel() == 1:
            shape = ()
        return fake_quant(x, scale.reshape(shape), None if zp is None else zp.reshape(shape), qmin, qmax)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, channels={self.channels}, form={self.form.short() if self.form else None}"
