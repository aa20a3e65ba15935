"""Integer containers for ONNX QDQ tensors: the smallest ONNX integer type that holds a grid and its zero points.

A b-bit grid [qmin, qmax] with integer zero points z is stored in a container type (INT4/UINT4 from opset 21,
INT8/UINT8, INT16/UINT16 from opset 21) shifted by an integer k: values q + k, zero points z + k. The shift changes
nothing a runtime computes ((q + k) - (z + k) = q - z), so a zero point outside the grid, or an unsigned 8-bit grid
that a signed-only target wants as int8, still fits. Grids narrower than their container keep their values inside
the narrower grid (weights) or are clipped to its float range before the QuantizeLinear (activations).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from quantsearch.errors import QuantsearchError


@dataclass(frozen=True)
class Container:
    """An ONNX integer type: its name, TensorProto code, range, and the opset that first allows it in QDQ."""

    name: str
    dtype: int
    lo: int
    hi: int
    min_opset: int

    @property
    def bits(self) -> int:
        """Storage bits per value."""
        return 4 if self.name.endswith("INT4") else 8 if self.name.endswith("INT8") else 16

    @property
    def signed(self) -> bool:
        """Whether the type is signed."""
        return not self.name.startswith("U")


CONTAINERS = {c.name: c for c in (
    Container("INT4", TensorProto.INT4, -8, 7, 21), Container("UINT4", TensorProto.UINT4, 0, 15, 21),
    Container("INT8", TensorProto.INT8, -128, 127, 13), Container("UINT8", TensorProto.UINT8, 0, 255, 13),
    Container("INT16", TensorProto.INT16, -32768, 32767, 21),
    Container("UINT16", TensorProto.UINT16, 0, 65535, 21))}


_NUMPY = {"INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16, "UINT16": np.uint16}


@dataclass(frozen=True)
class Placement:
    """Where a grid lands: the container and the shift k added to values and zero points."""

    container: Container
    shift: int
    qmin: int
    qmax: int

    @property
    def fills_container(self) -> bool:
        """True when the shifted grid is the whole container (QuantizeLinear's saturation is the grid's clamp)."""
        return self.qmin + self.shift == self.container.lo and self.qmax + self.shift == self.container.hi


def _order(bits: int, signed: bool, signed_only: bool) -> list[Container]:
    widths = ([4] if bits <= 4 else []) + [8, 16]
    out = []
    for w in widths:
        pair = [CONTAINERS[f"INT{w}"], CONTAINERS[f"UINT{w}"]]
        out += [c for c in (pair if signed or signed_only else pair[::-1]) if c.signed or not signed_only]
    return out


def place(bits: int, qmin: int, qmax: int, zmin: int, zmax: int, *, opset: int, signed_only: bool = False
          ) -> Placement:
    """The first container (narrowest, grid's own signedness first) that holds [qmin, qmax] and every zero point
    after one shift, preferring no shift, then the smallest; QuantsearchError when none does."""
    lo_need, hi_need = min(qmin, zmin), max(qmax, zmax)
    for c in _order(bits, qmin < 0, signed_only):
        if c.min_opset > opset:
            continue
        k_lo, k_hi = c.lo - lo_need, c.hi - hi_need
        if k_lo > k_hi:
            continue
        shift = 0 if k_lo <= 0 <= k_hi else (k_lo if k_lo > 0 else k_hi)
        return Placement(c, shift, qmin, qmax)
    raise QuantsearchError(f"no ONNX integer type at opset {opset} holds the grid [{qmin}, {qmax}] with zero points "
                           f"in [{zmin}, {zmax}]; export at opset 21 or round the offsets into the grid")


def int_tensor(name: str, values: np.ndarray, container: Container) -> TensorProto:
    """An initializer of `container`'s type (4-bit values packed by onnx's own helper)."""
    vals = np.asarray(values, dtype=np.int64)
    if vals.size and (vals.min() < container.lo or vals.max() > container.hi):
        raise QuantsearchError(f"{name}: values outside {container.name}'s range (internal error)")
    if container.bits == 4:
        return helper.make_tensor(name, container.dtype, list(vals.shape), vals.reshape(-1).tolist())
    return numpy_helper.from_array(vals.astype(_NUMPY[container.name]), name)
