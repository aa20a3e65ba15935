"""Backend profiles: the declarative table (profiles.yaml) of which forms each target supports."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from quantsearch._util import suggest
from quantsearch.errors import ConfigError
from quantsearch.quant.forms import QuantForm


@dataclass(frozen=True)
class BackendProfile:
    """The bit-widths, granularities and symmetries a deployment target supports."""

    name: str
    description: str
    weight_bits: tuple[int, ...]
    act_bits: tuple[int, ...]
    weight_granularity: tuple[str, ...]
    weight_symmetric: tuple[bool, ...]
    act_symmetric: tuple[bool, ...]

    def weight_forms(self) -> list[QuantForm]:
        """Every weight form the target runs."""
        return [QuantForm(b, g, s) for g in self.weight_granularity for s in self.weight_symmetric
                for b in self.weight_bits]

    def act_forms(self) -> list[QuantForm]:
        """Every activation form the target runs."""
        return [QuantForm(b, "per_tensor", s) for s in self.act_symmetric for b in self.act_bits]

    def supports(self, weight: QuantForm, activation: QuantForm) -> bool:
        """Whether a (weight, activation) pair is deployable on this target."""
        return weight in self.weight_forms() and activation in self.act_forms()


@lru_cache(maxsize=1)
def _table() -> dict[str, BackendProfile]:
    text = resources.files("quantsearch.quant").joinpath("profiles.yaml").read_text()
    out = {}
    for name, d in yaml.safe_load(text).items():
        out[name] = BackendProfile(
            name, d["description"], tuple(d["weight_bits"]), tuple(d["act_bits"]),
            tuple(d["weight_granularity"]), tuple(d["weight_symmetric"]), tuple(d["act_symmetric"]))
    return out


def list_profiles() -> dict[str, BackendProfile]:
    """All profiles by name."""
    return dict(_table())


def get_profile(name: str) -> BackendProfile:
    """A profile by name; unknown names raise ConfigError with a suggestion."""
    table = _table()
    if name not in table:
        raise ConfigError(f"unknown backend profile '{name}'{suggest(name, table)}; choose from {sorted(table)}")
    return table[name]
