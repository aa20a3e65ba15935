"""DQSS strategies: which calibrator sets each layer's input and weight scales, the scales it set, and the search's
final p and q. Frozen, JSON round-trip (the `strategy.json` format), and applied to a model in one call."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantsearch._util import atomic_write_json
from quantsearch.data.loader import Batch
from quantsearch.dqss.mixers import Mixer
from quantsearch.errors import ConfigError
from quantsearch.quant.convert import quant_layers
from quantsearch.space.build import quantize
from quantsearch.space.subnet import NamedLayers, SubnetConfig, set_config

STRATEGY_FORMAT = "quantsearch-dqss-strategy/1"


def _floats(v: Any) -> tuple[float, ...] | None:
    return None if v is None else tuple(float(x) for x in v)


@dataclass(frozen=True)
class LayerStrategy:
    """One layer's choice: the activation and weight calibrators, their scales and integer zero points (what a
    deployed graph holds), whether the input is unsigned, its activation group, and the final p and q."""

    activation: str
    weight: str
    activation_group: str
    activation_unsigned: bool
    activation_scale: float
    activation_zero_point: float | None
    weight_scale: tuple[float, ...]
    weight_zero_point: tuple[float, ...] | None
    p: tuple[float, ...]
    q: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (the per-layer entry of strategy.json)."""
        return {"activation": self.activation, "weight": self.weight, "activation_group": self.activation_group,
                "activation_unsigned": self.activation_unsigned, "activation_scale": self.activation_scale,
                "activation_zero_point": self.activation_zero_point, "weight_scale": list(self.weight_scale),
                "weight_zero_point": None if self.weight_zero_point is None else list(self.weight_zero_point),
                "p": list(self.p), "q": list(self.q)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], name: str = "") -> LayerStrategy:
        """Inverse of to_dict (a missing activation group means the layer's own)."""
        az = d["activation_zero_point"]
        return cls(str(d["activation"]), str(d["weight"]), str(d.get("activation_group", name)),
                   bool(d["activation_unsigned"]), float(d["activation_scale"]), None if az is None else float(az),
                   _floats(d["weight_scale"]) or (), _floats(d["weight_zero_point"]), _floats(d["p"]) or (),
                   _floats(d["q"]) or ())


@dataclass(frozen=True)
class Strategy(NamedLayers[LayerStrategy]):
    """A DQSS result: a LayerStrategy per quantized layer (a mapping by layer name), the config (bits and forms
    per layer) it quantizes to, the candidate calibrators, the mode, and what the search ran with (`search`).

    `weights` and `input_shape` are filled in by the job that writes strategy.json: the checkpoint the strategy
    applies to (relative: beside the file) and one input's shape, so the file alone rebuilds the model."""

    layers: tuple[tuple[str, LayerStrategy], ...]
    config: SubnetConfig
    candidates: tuple[str, ...]
    mode: str = "ptq"
    search: Mapping[str, Any] = field(default_factory=dict, compare=False)
    weights: str | None = None
    input_shape: tuple[int, ...] | None = None

    def __hash__(self) -> int:
        return hash((self.layers, self.config, self.candidates, self.mode))

    def choices(self) -> dict[str, tuple[str, str]]:
        """Per layer, (activation calibrator, weight calibrator)."""
        return {name: (st.activation, st.weight) for name, st in self.layers}

    def apply(self, model: nn.Module) -> nn.Module:
        """Activate the config on a converted model and write each layer's chosen scales into its active forms
        (in place; returns the model). The weights are the model's: for a QAT strategy, its fine-tuned ones."""
        layers = quant_layers(model)
        missing = set(layers) - set(self)
        if missing:
            raise ConfigError(f"the strategy has no layer {sorted(missing)[0]} of this model; apply it to the model "
                              "it was searched for")
        set_config(model, self.config)
        for name, layer in layers.items():
            st = self[name]
            cfg = layer.layer_config()
            assert cfg is not None
            layer.aq.nonneg = st.activation_unsigned
            az = st.activation_zero_point
            layer.aq.set_qparams(cfg.activation, torch.tensor([st.activation_scale]),
                                 None if az is None else torch.tensor([az]))
            wz = st.weight_zero_point
            layer.wq.set_qparams(cfg.weight, torch.tensor(st.weight_scale), None if wz is None else torch.tensor(wz))
        return model

    def build(self, model: nn.Module, example: Batch | None = None) -> nn.Module:
        """A quantized copy of a float `model` deploying this strategy (`quantize` + `apply`)."""
        return self.apply(quantize(model, self.config, example))

    @torch.no_grad()
    def with_scales_of(self, model: nn.Module) -> Strategy:
        """This strategy with the scales and (rounded) zero points the model's active forms hold now (after
        fine-tuning moved them)."""
        layers = []
        for name, layer in quant_layers(model).items():
            cfg = layer.layer_config()
            assert cfg is not None
            a_s, a_z = layer.aq.qparams(cfg.activation)
            w_s, w_z = layer.wq.qparams(cfg.weight)
            layers.append((name, replace(
                self[name], activation_scale=float(a_s.abs().reshape(())),
                activation_zero_point=None if a_z is None else float(a_z.round().reshape(())),
                weight_scale=tuple(w_s.abs().reshape(-1).tolist()),
                weight_zero_point=None if w_z is None else tuple(w_z.round().reshape(-1).tolist()))))
        return replace(self, layers=tuple(layers))

    def to_dict(self) -> dict[str, Any]:
        """The strategy.json layout."""
        return {"format": STRATEGY_FORMAT, "mode": self.mode, "config": self.config.to_dict(),
                "candidates": list(self.candidates), "weights": self.weights,
                "input_shape": None if self.input_shape is None else list(self.input_shape),
                "search": dict(self.search), "layers": {name: st.to_dict() for name, st in self.layers}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Strategy:
        """Inverse of to_dict; a dict without the format tag is refused."""
        if not isinstance(d, Mapping) or d.get("format") != STRATEGY_FORMAT:
            raise ConfigError(f"not a DQSS strategy ({STRATEGY_FORMAT})")
        shape = d.get("input_shape")
        return cls(tuple((name, LayerStrategy.from_dict(v, name)) for name, v in d["layers"].items()),
                   SubnetConfig.from_dict(d["config"]), tuple(d["candidates"]), str(d.get("mode", "ptq")),
                   dict(d.get("search") or {}), d.get("weights"), None if shape is None else tuple(shape))

    def to_json(self) -> str:
        """JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Strategy:
        """Parse JSON text."""
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        """Write the JSON file atomically."""
        atomic_write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Strategy:
        """Read a strategy file; a missing, unreadable or foreign file is one ConfigError line."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read strategy file {path} ({exc})") from exc
        if not isinstance(d, dict) or d.get("format") != STRATEGY_FORMAT:
            raise ConfigError(f"{path} is not a DQSS strategy file ({STRATEGY_FORMAT}); pass the strategy.json "
                              "that `quantsearch dqss` wrote")
        try:
            return cls.from_dict(d)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path} is a damaged DQSS strategy file ({type(exc).__name__}: {exc})") from exc


@torch.no_grad()
def choose(mixers: Mapping[str, Mixer], candidates: tuple[str, ...], pick: int | None = None
           ) -> tuple[tuple[str, LayerStrategy], ...]:
    """argmax per layer (or candidate `pick` on every layer): the chosen calibrators, their scales and zero points,
    and the final p and q."""
    out = []
    for name, m in mixers.items():
        p, q = m.probs()
        i, j = (int(p.argmax()), int(q.argmax())) if pick is None else (pick, pick)
        a, w = m.act, m.weight
        out.append((name, LayerStrategy(
            activation=candidates[i], weight=candidates[j], activation_group=m.group, activation_unsigned=a.nonneg,
            activation_scale=float(a.scales[i].abs()),
            activation_zero_point=None if a.zps is None else float(a.zps[i]),
            weight_scale=tuple(w.scales[j].abs().reshape(-1).tolist()),
            weight_zero_point=None if w.zps is None else tuple(w.zps[j].reshape(-1).tolist()),
            p=tuple(round(float(v), 6) for v in p), q=tuple(round(float(v), 6) for v in q))))
    return tuple(out)


def share_input_quantizers(model: nn.Module, strategy: Strategy) -> None:
    """Layers of one activation group use the group leader's input quantizer (one module), so fine-tuning
    keeps a shared tensor quantized once."""
    qlayers = quant_layers(model)
    for name, layer in qlayers.items():
        lead = strategy[name].activation_group
        if lead != name and qlayers[lead].aq.form == layer.aq.form:
            layer.aq = qlayers[lead].aq
