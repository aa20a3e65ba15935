"""Elastic quantizer: one scale/offset table per form it may take, switched by setting the active form.

Affine forms learn a real-valued offset beta in the tensor's units (LSQ+): x_q = s * clamp(round((x - beta)/s)) +
beta, i.e. a zero point z = -beta/s in grid units that is NOT rounded in training. Offsets in float units move
at the same pace as the data whatever the bit-width; stored in grid units and rounded in the forward they moved
~1e-3 units per Adam step and no rounded zero point changed in an epoch. Deployment rounds z once
(`round_offsets`, export, strategy files).

Under torch.compile the forward reads the active form from one integer buffer (`qcode`: column, granularity,
symmetry, grid signedness), written in place by `set_form`, instead of Python values: one graph serves every form,
so switching a subnet's bits or forms never recompiles. Eager keeps the specialised path (fewer passes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from quantsearch.quant.calibrators import Calibrator, MSECalibrator
from quantsearch.quant.fakequant import fake_quant, grad_scale, lsq_grad_factor
from quantsearch.quant.forms import ALL_BITS, MIN_BITS, QuantForm, grid_for

_NB = len(ALL_BITS)
# qcode bit fields: column (bits - MIN_BITS) in the low 3 bits, then per-channel, affine, signed grid
_PC, _ASYM, _SIGNED = 8, 16, 32

# a learned scale is used as |s| clamped to [SCALE_MIN, SCALE_MAX]: positive and finite whatever an optimiser step
# did to it (0 would divide by zero, inf would zero every value), elementwise on the device: no host sync
SCALE_MIN, SCALE_MAX = 1e-8, 1e8


def positive_scale(scale: torch.Tensor) -> torch.Tensor:
    """|scale| clamped into [SCALE_MIN, SCALE_MAX] (values inside are unchanged, and so is their gradient)."""
    return scale.abs().clamp(SCALE_MIN, SCALE_MAX)


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
    qcode: torch.Tensor

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
        # the active form as one integer the compiled graph reads (not in the state dict: set_form rewrites it)
        self.register_buffer("qcode", torch.zeros((), dtype=torch.long), persistent=False)
        self._nonneg = False
        self._form: QuantForm | None = None
        self.active = False  # a plain bool: the only Python value a compiled forward guards on

    @property
    def nonneg(self) -> bool:
        """Whether the input is non-negative (unsigned grid); decided once at calibration."""
        return self._nonneg

    @nonneg.setter
    def nonneg(self, value: bool) -> None:
        self._nonneg = bool(value)
        self._sync_code()

    @property
    def form(self) -> QuantForm | None:
        """The active form (None: the tensor stays in float)."""
        return self._form

    @form.setter
    def form(self, form: QuantForm | None) -> None:
        self._form = form
        self.active = form is not None
        self._sync_code()

    def _sync_code(self) -> None:
        """Mirror form and grid into `qcode`, in place (a new tensor would change what a compiled graph guards)."""
        form = self._form
        if form is None or "qcode" not in self._buffers:
            return
        signed = grid_for(form, self._nonneg)[0] < 0
        code = (form.bits - MIN_BITS) | (_PC if form.per_channel else 0) | (0 if form.symmetric else _ASYM) | \
            (_SIGNED if signed else 0)
        with torch.no_grad():
            self.qcode.fill_(code)

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
        scale = positive_scale(scale)
        return scale, None if beta is None else -beta / scale

    @torch.no_grad()
    def set_qparams(self, form: QuantForm, scale: torch.Tensor, zp: torch.Tensor | None) -> None:
        """Write one form's scale (and zero point, grid units) into its table column."""
        key = _key(form.per_channel, form.symmetric)
        col = form.bits - MIN_BITS
        table = getattr(self, f"scale_{key}")
        s = positive_scale(scale.reshape(-1).to(table))
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

    def _column(self, pc: bool, sym: bool, col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One table's (scale, offset or None) at column `col` (a [1] index tensor), shape [rows]."""
        key = _key(pc, sym)
        scale = getattr(self, f"scale_{key}").index_select(1, col).reshape(-1)
        return scale, None if sym else getattr(self, f"offset_{key}").index_select(1, col).reshape(-1)

    def _forward_graph(self, x: torch.Tensor) -> torch.Tensor:
        """The eager forward's maths with the form read from `qcode` by tensor ops (traced by torch.compile).

        Every table's column is gathered and the active one selected with torch.where, so the unselected tables get
        zero gradients; a symmetric form gets offset 0 (its zero point is -0.0: the same values as no offset); a
        per-tensor weight scale is broadcast to every channel (the same values)."""
        code = self.qcode
        col = (code % 8).reshape(1)
        asym = (code // _ASYM) % 2 == 1
        signed = (code // _SIGNED) % 2 == 1
        bits = col.reshape(()) + MIN_BITS
        half = torch.pow(2, bits - 1)
        qmin = torch.where(signed, -half, 0).to(x.dtype)
        qmax = torch.where(signed, half - 1, 2 * half - 1)
        s_sym, _ = self._column(False, True, col)
        s_asym, b_asym = self._column(False, False, col)
        if self.kind == "weight":
            pc = (code // _PC) % 2 == 1
            c_sym, _ = self._column(True, True, col)
            c_asym, c_beta = self._column(True, False, col)
            s_sym, s_asym = torch.where(pc, c_sym, s_sym), torch.where(pc, c_asym, s_asym)
            b_asym = torch.where(pc, c_beta, b_asym)  # type: ignore[arg-type]  # weight tables hold offsets
            n = torch.where(pc, x[0].numel(), x.numel())
            shape = (-1,) + (1,) * (x.dim() - 1)
        else:
            n = torch.full((), x[0].numel() if x.dim() > 1 else x.numel(), dtype=torch.long, device=x.device)
            shape = (1,) * x.dim()
        scale = torch.where(asym, s_asym, s_sym)
        beta = torch.where(asym, b_asym, 0.0)  # type: ignore[arg-type]  # every quantizer has an affine table
        # lsq_grad_factor in float64, as Python computes it, so the scale equals the eager one bit for bit
        g = (1.0 / torch.sqrt((n.clamp(min=1) * qmax.clamp(min=1)).double())).to(scale.dtype)
        scale = grad_scale(positive_scale(scale), g)
        zp = -grad_scale(beta, g) / scale
        return fake_quant(x, scale.reshape(shape), zp.reshape(shape), qmin, qmax.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize with the active form (identity when none is set)."""
        if not self.active:
            return x
        if torch.compiler.is_compiling():
            return self._forward_graph(x)
        form = self.form
        assert form is not None
        qmin, qmax = grid_for(form, self.nonneg)
        scale, beta = self.raw_qparams(form)
        if self.kind == "weight":
            n = x[0].numel() if form.per_channel else x.numel()
        else:
            n = x[0].numel() if x.dim() > 1 else x.numel()
        g = lsq_grad_factor(n, qmax)
        scale = grad_scale(positive_scale(scale), g)
        # z = -beta/s: autograd through this quotient gives LSQ+'s gradients for s and beta
        zp = None if beta is None else -grad_scale(beta, g) / scale
        shape = (-1,) + (1,) * (x.dim() - 1) if (self.kind == "weight" and form.per_channel) else (1,) * x.dim()
        if scale.numel() == 1:
            shape = ()
        return fake_quant(x, scale.reshape(shape), None if zp is None else zp.reshape(shape), qmin, qmax)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, channels={self.channels}, form={self.form.short() if self.form else None}"
