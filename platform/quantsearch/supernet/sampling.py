"""Sandwich sampling over a search space: max, min and random subnets stratified by average bits."""

from __future__ import annotations

from typing import Any

import numpy as np

from quantsearch.quant.forms import LayerConfig, QuantForm
from quantsearch.space.space import NetForm, SearchSpace, net_forms
from quantsearch.space.subnet import SubnetConfig


class SandwichSampler:
    """Draws the subnets of one sandwich step from a seeded numpy generator (its state is checkpointed)."""

    def __init__(self, space: SearchSpace, seed: int, sigma: float = 1.0) -> None:
        self.space = space
        self.rng = np.random.default_rng(seed)
        self.sigma = sigma
        self.forms = net_forms(space)

    def form(self) -> NetForm:
        """A random network-wide form."""
        return self.forms[int(self.rng.integers(len(self.forms)))]

    def max_config(self, form: NetForm) -> SubnetConfig:
        """All free layers at the profile's highest bits, in `form`."""
        return self.space.max_config(granularity=form.granularity, w_symmetric=form.w_symmetric,
                                     a_symmetric=form.a_symmetric)

    def min_config(self, form: NetForm) -> SubnetConfig:
        """All free layers at the profile's lowest bits, in `form`."""
        return self.space.min_config(granularity=form.granularity, w_symmetric=form.w_symmetric,
                                     a_symmetric=form.a_symmetric)

    def _bits_near(self, allowed: tuple[int, ...], target: float) -> int:
        choices = np.array(sorted(allowed), dtype=float)
        w = np.exp(-((choices - target) ** 2) / (2 * self.sigma**2))
        return int(choices[self.rng.choice(len(choices), p=w / w.sum())])

    def random_configs(self, n: int) -> list[SubnetConfig]:
        """n random subnets; subnet k targets the k-th of n equal strata of average bits.

        Per layer: bits drawn near the stratum's target, granularity and symmetry drawn uniformly where
        the profile allows, so both ends of the bit range and every form are covered.
        """
        p = self.space.profile
        lo = min(min(p.weight_bits), min(p.act_bits))
        hi = max(max(p.weight_bits), max(p.act_bits))
        out = []
        for k in range(n):
            target = lo + (hi - lo) * (k + self.rng.random()) / n
            layers = []
            for name in self.space.layer_names:
                w_forms, a_forms = self.space.layer_choices(name)
                gran = [f.granularity for f in w_forms]
                wsym = [f.symmetric for f in w_forms]
                g = gran[int(self.rng.integers(len(gran)))]
                ws = wsym[int(self.rng.integers(len(wsym)))]
                as_ = [f.symmetric for f in a_forms][int(self.rng.integers(len(a_forms)))]
                wb = self._bits_near(tuple({f.bits for f in w_forms}), target)
                ab = self._bits_near(tuple({f.bits for f in a_forms}), target)
                layers.append((name, LayerConfig(QuantForm(wb, g, ws), QuantForm(ab, "per_tensor", as_))))
            out.append(SubnetConfig(tuple(layers)))
        return out

    def state(self) -> dict[str, Any]:
        """The generator state (plain python types, safe for weights_only checkpoints)."""
        return dict(self.rng.bit_generator.state)

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore the generator state."""
        self.rng.bit_generator.state = state
