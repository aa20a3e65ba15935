"""Quantization forms: bits, granularity, symmetry; per-layer weight/activation pairs; integer grids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GRANULARITIES = ("per_channel", "per_tensor")
MIN_BITS, MAX_BITS = 2, 8
ALL_BITS = tuple(range(MIN_BITS, MAX_BITS + 1))


@dataclass(frozen=True, order=True)
class QuantForm:
    """How one tensor is quantized: bit-width 2..8, per-channel or per-tensor scale, symmetric or affine."""

    bits: int
    granularity: str = "per_tensor"
    symmetric: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {self.bits!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")

    @property
    def per_channel(self) -> bool:
        """True for one scale per output channel."""
        return self.granularity == "per_channel"

    def with_bits(self, bits: int) -> QuantForm:
        """The same form at another bit-width."""
        return QuantForm(bits, self.granularity, self.symmetric)

    def short(self) -> str:
        """Compact label such as '4b/pc/sym'."""
        return f"{self.bits}b/{'pc' if self.per_channel else 'pt'}/{'sym' if self.symmetric else 'asym'}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {"bits": self.bits, "granularity": self.granularity, "symmetric": self.symmetric}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantForm:
        """Inverse of to_dict."""
        return cls(int(d["bits"]), str(d.get("granularity", "per_tensor")), bool(d.get("symmetric", True)))


@dataclass(frozen=True, order=True)
class LayerConfig:
    """One quantized layer's weight form and input-activation form (activations are per-tensor)."""

    weight: QuantForm
    activation: QuantForm

    def __post_init__(self) -> None:
        if self.activation.per_channel:
            raise ValueError("activations are quantized per-tensor")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {"weight": self.weight.to_dict(), "activation": self.activation.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerConfig:
        """Inverse of to_dict."""
        return cls(QuantForm.from_dict(d["weight"]), QuantForm.from_dict(d["activation"]))

    def short(self) -> str:
        """Compact label such as 'W4(pc/sym) A4(pt/asym)'."""
        w, a = self.weight, self.activation
        return (f"W{w.bits}({'pc' if w.per_channel else 'pt'}/{'sym' if w.symmetric else 'asym'}) "
                f"A{a.bits}({'sym' if a.symmetric else 'asym'})")


def int_grid(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range: signed [-2^(b-1), 2^(b-1)-1], unsigned [0, 2^b-1]."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def grid_for(form: QuantForm, nonneg: bool) -> tuple[int, int]:
    """The grid a form uses: affine forms and non-negative symmetric inputs are unsigned."""
    return int_grid(form.bits, signed=form.symmetric and not nonneg)
