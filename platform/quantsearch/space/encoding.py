"""CQAP features of a subnet: one-hot network-wide form + per-layer one-hot bits (+ per-layer forms where they vary).

Layout of one row (METHODS.md section 3), in this order:
    form=<label> ...                 one-hot over net_forms(space); all zero for a config mixing forms
    per layer, execution order:
        <layer>.w<b> ..., <layer>.a<b> ...    one-hot weight / activation bits (free layers only: a pinned
                                              layer's bits never change, so they carry no information)
        <layer>.pc/.pt, .w-sym/.w-asym, .a-sym/.a-asym
                                              one-hot granularity / symmetries, each only where the profile
                                              offers a choice (pinned layers too: their form still varies)
Every one-hot has both states set explicitly (the release encoded 'asymmetric' as (0, 0) by mistake).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from quantsearch.errors import ConfigError
from quantsearch.quant.forms import LayerConfig
from quantsearch.space.space import NetForm, SearchSpace, net_forms
from quantsearch.space.subnet import SubnetConfig

ENCODER_FORMAT = 1


@dataclass(frozen=True)
class FeatureEncoder:
    """Turns SubnetConfigs of one search space into fixed-width float32 feature rows."""

    layer_names: tuple[str, ...]
    pinned: tuple[str, ...]
    forms: tuple[NetForm, ...]
    weight_bits: tuple[int, ...]
    act_bits: tuple[int, ...]
    # per-layer form choices; empty where the profile fixes them (then no feature is spent on them)
    granularities: tuple[str, ...] = ()
    w_symmetric: tuple[bool, ...] = ()
    a_symmetric: tuple[bool, ...] = ()

    @classmethod
    def for_space(cls, space: SearchSpace) -> FeatureEncoder:
        """The encoder of a search space: its layers, pins, network-wide forms and the profile's choices."""
        p = space.profile

        def varying(options: tuple[Any, ...]) -> tuple[Any, ...]:
            return tuple(options) if len(options) > 1 else ()

        return cls(tuple(space.layer_names), tuple(n for n, _ in space.pinned), tuple(net_forms(space)),
                   tuple(p.weight_bits), tuple(p.act_bits), varying(p.weight_granularity),
                   varying(p.weight_symmetric), varying(p.act_symmetric))

    @property
    def free(self) -> tuple[str, ...]:
        """Layers whose bits are searched (not pinned), in execution order."""
        return tuple(n for n in self.layer_names if n not in self.pinned)

    @property
    def dim(self) -> int:
        """Width of one feature row."""
        per_form = len(self.granularities) + len(self.w_symmetric) + len(self.a_symmetric)
        return (len(self.forms) + len(self.free) * (len(self.weight_bits) + len(self.act_bits))
                + len(self.layer_names) * per_form)

    def feature_names(self) -> list[str]:
        """One readable name per column, in column order."""
        names = [f"form={f.label()}" for f in self.forms]
        for layer in self.layer_names:
            if layer not in self.pinned:
                names += [f"{layer}.w{b}" for b in self.weight_bits]
                names += [f"{layer}.a{b}" for b in self.act_bits]
            names += [f"{layer}.{'pc' if g == 'per_channel' else 'pt'}" for g in self.granularities]
            names += [f"{layer}.w-{'sym' if s else 'asym'}" for s in self.w_symmetric]
            names += [f"{layer}.a-{'sym' if s else 'asym'}" for s in self.a_symmetric]
        return names

    def net_form(self, config: SubnetConfig) -> NetForm | None:
        """The network-wide form every layer shares, or None when the layers mix forms."""
        shared = {(c.weight.granularity, c.weight.symmetric, c.activation.symmetric) for c in config.values()}
        if len(shared) != 1:
            return None
        g, ws, as_ = shared.pop()
        return NetForm(g, ws, as_)

    def _layers(self, config: SubnetConfig) -> dict[str, LayerConfig]:
        """The config's layers by name; ConfigError unless they are exactly this space's layers."""
        layers = dict(config.layers)
        if len(layers) == len(config.layers) and layers.keys() == set(self.layer_names):
            return layers
        missing = sorted(set(self.layer_names) - layers.keys())
        extra = sorted(layers.keys() - set(self.layer_names))
        raise ConfigError(f"subnet config does not match the predictor's search space: missing {missing[:3]}, "
                          f"unknown {extra[:3]}; fit the predictor on subnets of this model")

    def _layer_row(self, name: str, cfg: LayerConfig) -> list[int]:
        """Column offsets (relative to this layer's block) set to 1 for one layer."""
        hot: list[int] = []
        at = 0
        if name not in self.pinned:
            for bits, vocab, kind in ((cfg.weight.bits, self.weight_bits, "weight"),
                                      (cfg.activation.bits, self.act_bits, "activation")):
                if bits not in vocab:
                    raise ConfigError(f"layer {name} has {kind} bits {bits}, outside the predictor's space "
                                      f"({list(vocab)}); fit the predictor on this profile")
                hot.append(at + vocab.index(bits))
                at += len(vocab)
        # checked against the net forms too, so a fixed-form profile (no form columns) still rejects other forms
        if (cfg.weight.granularity, cfg.weight.symmetric, cfg.activation.symmetric) not in self._form_keys():
            raise ConfigError(f"layer {name} uses {cfg.short()}, a form outside the predictor's space "
                              f"({', '.join(f.label() for f in self.forms)}); fit the predictor on this profile")
        for value, options in ((cfg.weight.granularity, self.granularities),
                               (cfg.weight.symmetric, self.w_symmetric),
                               (cfg.activation.symmetric, self.a_symmetric)):
            if options:
                hot.append(at + options.index(value))
                at += len(options)
        return hot

    def _form_keys(self) -> set[tuple[str, bool, bool]]:
        return {(f.granularity, f.w_symmetric, f.a_symmetric) for f in self.forms}

    def encode(self, configs: Sequence[SubnetConfig]) -> npt.NDArray[np.float32]:
        """Feature matrix (len(configs), dim); ConfigError for a config of another space."""
        out = np.zeros((len(configs), self.dim), dtype=np.float32)
        per_form = len(self.granularities) + len(self.w_symmetric) + len(self.a_symmetric)
        bit_width = len(self.weight_bits) + len(self.act_bits)
        for row, config in enumerate(configs):
            layers = self._layers(config)
            form = self.net_form(config)
            if form is not None and form in self.forms:
                out[row, self.forms.index(form)] = 1.0
            at = len(self.forms)
            for name in self.layer_names:  # the encoder's order, so columns never depend on the config's order
                for col in self._layer_row(name, layers[name]):
                    out[row, at + col] = 1.0
                at += per_form + (0 if name in self.pinned else bit_width)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (saved beside a predictor so it can rebuild its encoder without the model)."""
        return {"format": ENCODER_FORMAT, "layer_names": list(self.layer_names), "pinned": list(self.pinned),
                "forms": [{"granularity": f.granularity, "w_symmetric": f.w_symmetric, "a_symmetric": f.a_symmetric}
                          for f in self.forms],
                "weight_bits": list(self.weight_bits), "act_bits": list(self.act_bits),
                "granularities": list(self.granularities), "w_symmetric": list(self.w_symmetric),
                "a_symmetric": list(self.a_symmetric)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureEncoder:
        """Inverse of to_dict; a malformed or newer dict raises ConfigError."""
        try:
            if d.get("format") != ENCODER_FORMAT:
                raise ValueError(f"format {d.get('format')!r}, this version reads {ENCODER_FORMAT}")
            return cls(tuple(str(n) for n in d["layer_names"]), tuple(str(n) for n in d["pinned"]),
                       tuple(NetForm(str(f["granularity"]), bool(f["w_symmetric"]), bool(f["a_symmetric"]))
                             for f in d["forms"]),
                       tuple(int(b) for b in d["weight_bits"]), tuple(int(b) for b in d["act_bits"]),
                       tuple(str(g) for g in d["granularities"]), tuple(bool(s) for s in d["w_symmetric"]),
                       tuple(bool(s) for s in d["a_symmetric"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"not a valid feature encoder ({exc}); refit the predictor") from exc
