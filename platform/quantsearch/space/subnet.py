"""SubnetConfig: one LayerConfig per quantized layer; frozen, hashable, JSON round-trip, readable summary."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from quantsearch.errors import ConfigError
from quantsearch.quant.convert import quant_info, quant_layers
from quantsearch.quant.forms import LayerConfig, QuantForm

V = TypeVar("V")


class NamedLayers(Mapping[str, V]):
    """A read-only mapping over `self.layers`, a tuple of (layer name, value) pairs in execution order (the frozen,
    hashable storage of SubnetConfig and the DQSS Strategy)."""

    layers: tuple[tuple[str, V], ...]

    def __getitem__(self, key: str) -> V:
        for name, value in self.layers:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self.layers)

    def __len__(self) -> int:
        return len(self.layers)


@dataclass(frozen=True)
class SubnetConfig(NamedLayers[LayerConfig]):
    """Maps layer names to LayerConfig; stored as a sorted tuple so it hashes and compares by value."""

    layers: tuple[tuple[str, LayerConfig], ...]

    @classmethod
    def from_mapping(cls, m: Mapping[str, LayerConfig]) -> SubnetConfig:
        """Build from any name -> LayerConfig mapping (order kept)."""
        return cls(tuple(m.items()))

    def __hash__(self) -> int:
        return hash(self.layers)

    def avg_bits(self) -> tuple[float, float]:
        """Unweighted mean (weight bits, activation bits) over layers."""
        n = max(len(self.layers), 1)
        return (sum(c.weight.bits for _, c in self.layers) / n, sum(c.activation.bits for _, c in self.layers) / n)

    def summary(self) -> str:
        """One readable line: layer count, mean bits, the most common layer forms."""
        w, a = self.avg_bits()
        common = Counter(c.short() for _, c in self.layers).most_common(2)
        forms = "; ".join(f"{k} x{v}" for k, v in common)
        return f"{len(self)} layers, mean W{w:.2f} A{a:.2f} [{forms}]"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {"layers": {name: cfg.to_dict() for name, cfg in self.layers}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SubnetConfig:
        """Inverse of to_dict."""
        return cls(tuple((name, LayerConfig.from_dict(c)) for name, c in d["layers"].items()))

    def to_json(self) -> str:
        """JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> SubnetConfig:
        """Parse JSON text."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> SubnetConfig:
        """Read a SubnetConfig JSON file; a bad file raises ConfigError."""
        try:
            return cls.from_json(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"subnet file {path} does not exist") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is not a valid subnet config ({exc}); see `quantsearch qat --help`") from exc


def uniform_config(layer_names: list[str], weight: QuantForm, activation: QuantForm,
                   pinned: Mapping[str, int] | None = None) -> SubnetConfig:
    """Every layer at the same forms; `pinned` layers keep their forms at the given bits."""
    pinned = pinned or {}
    return SubnetConfig(tuple(
        (n, LayerConfig(weight.with_bits(pinned[n]), activation.with_bits(pinned[n])) if n in pinned
         else LayerConfig(weight, activation)) for n in layer_names))


def pinned_layers(model: nn.Module) -> dict[str, int]:
    """Layer name -> pinned bits, for a converted model."""
    bits = quant_info(model).pinned_bits
    return {n: bits for n, layer in quant_layers(model).items() if layer.pinned}


def model_uniform(model: nn.Module, weight: QuantForm, activation: QuantForm) -> SubnetConfig:
    """Uniform config for a converted model, honouring its pinned layers."""
    return uniform_config(list(quant_layers(model)), weight, activation, pinned_layers(model))


def set_config(model: nn.Module, config: SubnetConfig) -> None:
    """Activate `config` on a converted model; every quantized layer must be named."""
    layers = quant_layers(model)
    missing = set(layers) - set(config)
    extra = set(config) - set(layers)
    if missing or extra:
        raise ConfigError(f"subnet config does not match the model: missing {sorted(missing)[:3]}, "
                          f"unknown {sorted(extra)[:3]}; build it for this model")
    for name, layer in layers.items():
        layer.set_layer_config(config[name])


def get_config(model: nn.Module) -> SubnetConfig | None:
    """The active config of a converted model, or None if any layer runs in float."""
    out = []
    for name, layer in quant_layers(model).items():
        cfg = layer.layer_config()
        if cfg is None:
            return None
        out.append((name, cfg))
    return SubnetConfig(tuple(out))


def parse_uniform(text: str, weight_granularity: str = "per_channel", weight_symmetric: bool = True,
                  act_symmetric: bool = False) -> tuple[QuantForm, QuantForm]:
    """Parse 'uniform:W4A4' (or 'W4A4') into (weight form, activation form)."""
    import re

    m = re.fullmatch(r"(?:uniform:)?W(\d)A(\d)", text.strip(), flags=re.IGNORECASE)
    if not m:
        raise ConfigError(f"config '{text}' must look like uniform:W4A4 or be a subnet JSON file")
    try:
        return (QuantForm(int(m[1]), weight_granularity, weight_symmetric),
                QuantForm(int(m[2]), "per_tensor", act_symmetric))
    except ValueError as exc:
        raise ConfigError(f"config '{text}': {exc}") from exc
