"""Search space of a converted model under a backend profile: per-layer choices, max/min/uniform/random."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from quantsearch.errors import ConfigError
from quantsearch.quant.convert import quant_layers
from quantsearch.quant.forms import LayerConfig, QuantForm
from quantsearch.quant.profiles import BackendProfile
from quantsearch.space.subnet import SubnetConfig, pinned_layers


@dataclass(frozen=True)
class NetForm:
    """A network-wide form: weight granularity, weight symmetry, activation symmetry."""

    granularity: str
    w_symmetric: bool
    a_symmetric: bool

    def label(self) -> str:
        """Short label such as 'pc-sym/asym'."""
        return (f"{'pc' if self.granularity == 'per_channel' else 'pt'}-"
                f"{'sym' if self.w_symmetric else 'asym'}/{'sym' if self.a_symmetric else 'asym'}")


def net_forms(space: SearchSpace) -> list[NetForm]:
    """Every network-wide form the space's profile allows."""
    p = space.profile
    return [NetForm(g, ws, as_) for g in p.weight_granularity for ws in p.weight_symmetric for as_ in p.act_symmetric]


@dataclass(frozen=True)
class SearchSpace:
    """Which forms each layer may take; pinned layers only at their pinned bits."""

    layer_names: tuple[str, ...]
    profile: BackendProfile
    pinned: tuple[tuple[str, int], ...]

    @classmethod
    def for_model(cls, model: nn.Module, profile: BackendProfile) -> SearchSpace:
        """Space for a converted model; pinned bits outside the profile snap to its nearest bit-width."""
        pins = {}
        for name, bits in pinned_layers(model).items():
            allowed = sorted(set(profile.weight_bits) & set(profile.act_bits)) or sorted(profile.weight_bits)
            pins[name] = min(allowed, key=lambda b: (abs(b - bits), -b))
        return cls(tuple(quant_layers(model)), profile, tuple(sorted(pins.items())))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict: layer names in execution order, the profile's name, pinned bits."""
        return {"layer_names": list(self.layer_names), "profile": self.profile.name, "pinned": dict(self.pinned)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSpace:
        """Inverse of to_dict (the profile is looked up by name)."""
        from quantsearch.quant.profiles import get_profile

        try:
            return cls(tuple(d["layer_names"]), get_profile(d["profile"]),
                       tuple(sorted((str(k), int(v)) for k, v in d["pinned"].items())))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a search space description ({exc}); expected layer_names, profile, pinned") from exc

    def _pin(self, name: str) -> int | None:
        return dict(self.pinned).get(name)

    def layer_choices(self, name: str) -> tuple[list[QuantForm], list[QuantForm]]:
        """(weight forms, activation forms) that layer `name` may take."""
        w, a = self.profile.weight_forms(), self.profile.act_forms()
        pin = self._pin(name)
        if pin is not None:
            w = sorted({f.with_bits(pin) for f in w})
            a = sorted({f.with_bits(pin) for f in a})
        return w, a

    def contains(self, config: SubnetConfig) -> bool:
        """Whether every layer's config is allowed here."""
        if set(config) != set(self.layer_names):
            return False
        for name in self.layer_names:
            w, a = self.layer_choices(name)
            if config[name].weight not in w or config[name].activation not in a:
                return False
        return True

    def uniform(self, w_bits: int, a_bits: int, granularity: str | None = None, w_symmetric: bool | None = None,
                a_symmetric: bool | None = None) -> SubnetConfig:
        """All free layers at (w_bits, a_bits) in one form (profile's first choices by default)."""
        p = self.profile
        if w_bits not in p.weight_bits or a_bits not in p.act_bits:
            raise ConfigError(f"W{w_bits}A{a_bits} is not in profile '{p.name}' "
                              f"(weights {list(p.weight_bits)}, activations {list(p.act_bits)})")
        g = granularity or p.weight_granularity[0]
        ws = p.weight_symmetric[0] if w_symmetric is None else w_symmetric
        as_ = p.act_symmetric[0] if a_symmetric is None else a_symmetric
        wf, af = QuantForm(w_bits, g, ws), QuantForm(a_bits, "per_tensor", as_)
        if not p.supports(wf, af):
            raise ConfigError(f"{wf.short()} / {af.short()} is not supported by profile '{p.name}'")
        out = []
        for name in self.layer_names:
            pin = self._pin(name)
            out.append((name, LayerConfig(wf.with_bits(pin), af.with_bits(pin)) if pin else LayerConfig(wf, af)))
        return SubnetConfig(tuple(out))

    def max_config(self, **form: object) -> SubnetConfig:
        """Every free layer at the profile's highest bits."""
        return self.uniform(max(self.profile.weight_bits), max(self.profile.act_bits), **form)  # type: ignore[arg-type]

    def min_config(self, **form: object) -> SubnetConfig:
        """Every free layer at the profile's lowest bits."""
        return self.uniform(min(self.profile.weight_bits), min(self.profile.act_bits), **form)  # type: ignore[arg-type]

    def random(self, rng: np.random.Generator) -> SubnetConfig:
        """Per-layer uniform draw of every allowed choice."""
        out = []
        for name in self.layer_names:
            w, a = self.layer_choices(name)
            out.append((name, LayerConfig(w[rng.integers(len(w))], a[rng.integers(len(a))])))
        return SubnetConfig(tuple(out))
