"""Genome: a search space's configs as integer vectors, for a genetic search.

    x[0]           index into the searched network-wide forms (granularity, weight symmetry, activation symmetry)
    x[1 + 2i]      weight-bits index of the i-th free (non-pinned) layer, over the profile's weight bits, ascending
    x[2 + 2i]      activation-bits index of the same layer, over the profile's activation bits, ascending

Pinned layers keep their pinned bits and get no gene. Bits are indexed in ascending order so that neighbouring
integers are neighbouring bit-widths: SBX and polynomial mutation then move bits a little, not at random. The map
is one-to-one, so a genome identifies a config and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from quantsearch.errors import ConfigError
from quantsearch.quant.forms import LayerConfig, QuantForm
from quantsearch.space.space import NetForm, SearchSpace, net_forms
from quantsearch.space.subnet import SubnetConfig

IntArray = npt.NDArray[np.int64]


def layer_form(layer: LayerConfig) -> NetForm:
    """The network-wide form one layer's config belongs to."""
    return NetForm(layer.weight.granularity, layer.weight.symmetric, layer.activation.symmetric)


@dataclass(frozen=True)
class Genome:
    """Integer encoding of a space's single-form configs (see the module docstring for the layout)."""

    space: SearchSpace
    forms: tuple[NetForm, ...]
    free: tuple[str, ...]
    w_bits: tuple[int, ...]
    a_bits: tuple[int, ...]

    @classmethod
    def for_space(cls, space: SearchSpace, forms: Literal["all", "first"] = "all") -> Genome:
        """Genome of `space`; forms='first' searches only the profile's first form."""
        if forms not in ("all", "first"):
            raise ConfigError(f"forms must be 'all' or 'first', got {forms!r}")
        every = net_forms(space)
        pinned = {name for name, _ in space.pinned}
        return cls(space, tuple(every if forms == "all" else every[:1]),
                   tuple(n for n in space.layer_names if n not in pinned),
                   tuple(sorted(space.profile.weight_bits)), tuple(sorted(space.profile.act_bits)))

    @property
    def n_var(self) -> int:
        """Number of genes."""
        return 1 + 2 * len(self.free)

    @property
    def xl(self) -> IntArray:
        """Lower bound of every gene (all zero)."""
        return np.zeros(self.n_var, dtype=np.int64)

    @property
    def xu(self) -> IntArray:
        """Upper bound of every gene (inclusive)."""
        per_layer = [len(self.w_bits) - 1, len(self.a_bits) - 1] * len(self.free)
        return np.array([len(self.forms) - 1, *per_layer], dtype=np.int64)

    def decode(self, x: npt.ArrayLike) -> SubnetConfig:
        """The config a genome stands for (always inside the space)."""
        genes = self._check(x)
        form = self.forms[genes[0]]
        bits = {name: (self.w_bits[genes[1 + 2 * i]], self.a_bits[genes[2 + 2 * i]])
                for i, name in enumerate(self.free)}
        pins = dict(self.space.pinned)
        out = []
        for name in self.space.layer_names:
            w, a = bits[name] if name in bits else (pins[name], pins[name])
            out.append((name, LayerConfig(QuantForm(w, form.granularity, form.w_symmetric),
                                          QuantForm(a, "per_tensor", form.a_symmetric))))
        return SubnetConfig(tuple(out))

    def encode(self, config: SubnetConfig) -> IntArray:
        """The genome of a single-form config in the space; anything else raises ConfigError."""
        if not self.space.contains(config):
            raise ConfigError(f"config is not in the search space ({self._outside(config)}); "
                              f"build it for this model and profile '{self.space.profile.name}'")
        found = sorted({layer_form(c) for c in config.values()}, key=NetForm.label)
        if len(found) > 1:
            raise ConfigError(f"config mixes per-layer forms ({', '.join(f.label() for f in found)}); "
                              "the genome searches one network-wide form")
        if found[0] not in self.forms:
            raise ConfigError(f"config's form {found[0].label()} is not searched here "
                              f"(searched: {', '.join(f.label() for f in self.forms)}); use forms='all'")
        genes = [self.forms.index(found[0])]
        for name in self.free:
            genes += [self.w_bits.index(config[name].weight.bits), self.a_bits.index(config[name].activation.bits)]
        return np.array(genes, dtype=np.int64)

    def uniform_bits(self) -> list[int]:
        """Bit-widths b with W=b and A=b both allowed, ascending."""
        return sorted(set(self.w_bits) & set(self.a_bits))

    def uniform_genomes(self) -> IntArray:
        """Genomes of every uniform config (each WbAb, in each searched form), form-major, bits ascending."""
        rows = [[f, *[self.w_bits.index(b), self.a_bits.index(b)] * len(self.free)]
                for f in range(len(self.forms)) for b in self.uniform_bits()]
        return np.array(rows, dtype=np.int64).reshape(len(rows), self.n_var)

    def uniform_labels(self) -> list[str]:
        """Labels of uniform_genomes() in the same order: 'W4A4', plus the form when several are searched."""
        suffix = [f" {f.label()}" if len(self.forms) > 1 else "" for f in self.forms]
        return [f"W{b}A{b}{s}" for s in suffix for b in self.uniform_bits()]

    def _check(self, x: npt.ArrayLike) -> list[int]:
        arr = np.asarray(x)
        if arr.shape != (self.n_var,):
            raise ValueError(f"a genome has {self.n_var} genes, got shape {arr.shape}")
        if not np.array_equal(arr, np.round(arr)) or np.any(arr < self.xl) or np.any(arr > self.xu):
            raise ValueError(f"genome {arr.tolist()} is outside the integer bounds 0..{self.xu.tolist()}")
        return [int(v) for v in arr]

    def _outside(self, config: SubnetConfig) -> str:
        """Why a config is not in the space, in a few words."""
        missing = [n for n in self.space.layer_names if n not in config]
        unknown = [n for n in config if n not in self.space.layer_names]
        if missing or unknown:
            return f"missing layers {missing[:3]}, unknown layers {unknown[:3]}"
        for name in self.space.layer_names:
            w, a = self.space.layer_choices(name)
            if config[name].weight not in w or config[name].activation not in a:
                return f"layer '{name}' has {config[name].short()}"
        return "it is not allowed"
