"""Elastic quantizer: one scale/offset table per form it may take, switched by setting the active form.

Affine forms learn a real-valued offset beta in the tensor's units (LSQ+): x_q = s * clamp(round((x - beta)/s)) +
beta, i.e. a zero point z = -beta/s in grid units that is NOT rounded in training. Offsets in float units move
at the same pace as the data whatever the bit-width; stored in grid units and rounded in the forward they moved
~1e-3 units per Adam step and no rounded zero point changed in an epoch. Deployment rounds z once
(`round_offsets`, export, strategy files).
"""

from __future__ import annotations

from typing import Any

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

    Tables `scale_<g>_<s>` ([rows, 7], one column per bit-width 2..8) and `offset_<g>_asym` (beta, in the
    tensor's units) exist for every form from construction on, so optimizers and load_state_dict see them before
    any forward. `nonneg` (unsigned grid) is a Python flag decided at calibration and kept in the state dict's
    extra state, so the forward never reads a tensor on the host.
    """

    calibrated: torch.Tensor

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
                    self.register_parameter(f"offset_{_key(pc, sym)}", nn.Parameter(torch.zeros(rows, _NB)))
        self.register_buffer("calibrated", torch.tensor(False))
        self.nonneg = False  # whether the input is non-negative (unsigned grid); decided once at calibration
        self.form: QuantForm | None = None

    def get_extra_state(self) -> dict[str, bool]:
        """The Python flags a state dict must carry."""
        return {"nonneg": self.nonneg}

    def set_extra_state(self, state: dict[str, bool]) -> None:
        """Inverse of get_extra_state."""
        self.nonneg = bool(state["nonneg"])

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # state dicts written before offsets were learnable: zero points in grid units, nonneg as a buffer
        if prefix + "nonneg" in state_dict and prefix + "_extra_state" not in state_dict:
            state_dict[prefix + "_extra_state"] = {"nonneg": bool(state_dict.pop(prefix + "nonneg"))}
        for key in [k for k in state_dict if k.startswith(prefix + "zp_")]:
            gran = key[len(prefix) + 3:]
            state_dict[prefix + f"offset_{gran}"] = -state_dict.pop(key) * state_dict[prefix + f"scale_{gran}"].abs()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_form(self, form: QuantForm | None) -> None:
        """Select the active form; None leaves the tensor in float."""
        if form is not None and self.kind == "activation" and form.per_channel:
            raise ValueError("activation quantizers are per-tensor")
        self.form = form

    def raw_qparams(self, form: QuantForm) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scale as stored, may be negative; offset beta or None) columns for `form`, shape [rows]."""
        key = _key(form.per_channel, form.symmetric)
        col = form.bits - MIN_BITS
        scale = getattr(self, f"scale_{key}")[:, col]
        return scale, None if form.symmetric else getattr(self, f"offset_{key}")[:, col]

    def qparams(self, form: QuantForm) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scale > 0, zero point in grid units z = -beta/s, real-valued, or None) for `form`, shape [rows]."""
        scale, beta = self.raw_qparams(form)
        scale = scale.abs()
        return scale, None if beta is None else -beta / scale

    @torch.no_grad()
    def set_qparams(self, form: QuantForm, scale: torch.Tensor, zp: torch.Tensor | None) -> None:
        """Write one form's scale (and zero point, grid units) into its table column."""
        key = _key(form.per_channel, form.symmetric)
        col = form.bits - MIN_BITS
        table = getattr(self, f"scale_{key}")
        s = scale.reshape(-1).to(table).abs()
        table[:, col] = s
        if not form.symmetric and zp is not None:
            getattr(self, f"offset_{key}")[:, col] = -zp.reshape(-1).to(table) * s

    @torch.no_grad()
    def round_offsets(self, form: QuantForm) -> None:
        """Snap `form`'s zero points to the integer grid (what a deployed integer runtime holds)."""
        scale, zp = self.qparams(form)
        if zp is not None:
            self.set_qparams(form, scale, zp.round())

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
            self.nonneg = bool(x.min() >= 0)
        for form in forms or self.all_forms():
            scale, zp = calibrator.scale_offset(x, form, self.nonneg, kind=self.kind)
            self.set_qparams(form, scale, zp)
        self.calibrated.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize with the active form (identity when none is set)."""
        form = self.form
        if form is None:
            return x
        qmin, qmax = grid_for(form, self.nonneg)
        scale, beta = self.raw_qparams(form)
        if self.kind == "weight":
            n = x[0].numel() if form.per_channel else x.numel()
        else:
            n = x[0].numel() if x.dim() > 1 else x.numel()
        g = lsq_grad_factor(n, qmax)
        scale = grad_scale(scale.abs(), g)
        # z = -beta/s: autograd through this quotient gives LSQ+'s gradients for s and beta
        zp = None if beta is None else -grad_scale(beta, g) / scale
        shape = (-1,) + (1,) * (x.dim() - 1) if (self.kind == "weight" and form.per_channel) else (1,) * x.dim()
        if scale.numel() == 1:
            shape = ()
        return fake_quant(x, scale.reshape(shape), None if zp is None else zp.reshape(shape), qmin, qmax)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, channels={self.channels}, form={self.form.short() if self.form else None}"
