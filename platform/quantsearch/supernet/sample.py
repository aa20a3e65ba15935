"""Sampling and measuring subnets of a trained supernet: the measured table CQAP is fitted on.

Sampling is stratified twice: over the network-wide forms the profile allows (the predictor is conditional on
the form) and, within each form, over average bits (equal strata from the lowest to the highest bit-width), so
both ends of the cost range are covered. Measuring is BN recalibration + val top-1 (test never: search picks on
val). A row per subnet carries what the predictor and the search need, plus how it was measured.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Literal

import numpy as np
from torch import nn

from quantsearch.data.loader import Batch
from quantsearch.quant.forms import LayerConfig, QuantForm
from quantsearch.space.cost import LayerCost, subnet_cost
from quantsearch.space.genome import layer_form
from quantsearch.space.space import NetForm, SearchSpace, net_forms
from quantsearch.space.subnet import SubnetConfig
from quantsearch.supernet.measure import measure_subnet

MEASURED_COLUMNS = ("config", "form", "avg_w_bits", "avg_a_bits", "avg_bits", "bitops", "weight_bytes", "val_acc",
                    "val_images", "bn_images", "seed")
Row = dict[str, Any]


def searched_forms(space: SearchSpace, forms: Literal["all", "first"] = "all") -> list[NetForm]:
    """The network-wide forms sampled and searched: all the profile allows, or its first only."""
    every = net_forms(space)
    return every if forms == "all" else every[:1]


def form_label(config: SubnetConfig, space: SearchSpace) -> str:
    """The config's network-wide form label ('pc-sym/asym'), or 'mixed' when its free layers differ."""
    pinned = dict(space.pinned)
    labels = {layer_form(c).label() for name, c in config.layers if name not in pinned}
    return labels.pop() if len(labels) == 1 else "mixed"


def _bits_near(rng: np.random.Generator, allowed: Sequence[int], target: float, sigma: float) -> int:
    choices = np.array(sorted(set(allowed)), dtype=float)
    w = np.exp(-((choices - target) ** 2) / (2 * sigma**2))
    return int(choices[rng.choice(len(choices), p=w / w.sum())])


def _draw(space: SearchSpace, form: NetForm, target: float, rng: np.random.Generator, sigma: float) -> SubnetConfig:
    layers = []
    for name in space.layer_names:
        w_forms, a_forms = space.layer_choices(name)
        w_bits = [f.bits for f in w_forms if (f.granularity, f.symmetric) == (form.granularity, form.w_symmetric)]
        a_bits = [f.bits for f in a_forms if f.symmetric == form.a_symmetric]
        wb, ab = _bits_near(rng, w_bits, target, sigma), _bits_near(rng, a_bits, target, sigma)
        layers.append((name, LayerConfig(QuantForm(wb, form.granularity, form.w_symmetric),
                                         QuantForm(ab, "per_tensor", form.a_symmetric))))
    return SubnetConfig(tuple(layers))


def sample_configs(space: SearchSpace, n: int, seed: int, forms: Literal["all", "first"] = "all",
                   exclude: Collection[SubnetConfig] = (), sigma: float = 1.0) -> list[SubnetConfig]:
    """n distinct subnets (none in `exclude`): round-robin over the network-wide forms, and within a form the
    k-th of its subnets targets the k-th of equal average-bits strata (per layer, bits drawn near the target)."""
    rng = np.random.default_rng(seed)
    fs = searched_forms(space, forms)
    p = space.profile
    lo, hi = min(min(p.weight_bits), min(p.act_bits)), max(max(p.weight_bits), max(p.act_bits))
    per_form = -(-n // len(fs))
    seen, out = set(exclude), []
    for k in range(n):
        form, stratum = fs[k % len(fs)], k // len(fs)
        for _ in range(50):  # a small space runs out of fresh configs: give up on that one after 50 draws
            cfg = _draw(space, form, lo + (hi - lo) * (stratum + rng.random()) / per_form, rng, sigma)
            if cfg not in seen:
                seen.add(cfg)
                out.append(cfg)
                break
    return out


def measured_row(config: SubnetConfig, space: SearchSpace, costs: list[LayerCost], val_acc: float,
                 val_images: int, bn_images: int, seed: int) -> Row:
    """One row of the measured table (MEASURED_COLUMNS)."""
    w, a = config.avg_bits()
    cost = subnet_cost(costs, config)
    return {"config": json.dumps(config.to_dict(), separators=(",", ":")), "form": form_label(config, space),
            "avg_w_bits": w, "avg_a_bits": a,
            "avg_bits": (w + a) / 2, "bitops": cost.bitops, "weight_bytes": cost.weight_bytes, "val_acc": val_acc,
            "val_images": val_images, "bn_images": bn_images, "seed": seed}


def measure_configs(model: nn.Module, space: SearchSpace, costs: list[LayerCost], configs: Iterable[SubnetConfig],
                    val_batches: Iterable[Batch], bn_batches: Iterable[Batch], bn_images: int, seed: int,
                    on_row: Callable[[Row], None] | None = None) -> list[Row]:
    """Measure each config on a supernet's model (BN recalibrated on `bn_images` images of `bn_batches`, top-1 on
    `val_batches`; both re-iterable) and return its rows; `on_row` sees each row as it is measured."""
    rows: list[Row] = []
    val_images = -1
    for config in configs:
        acc = measure_subnet(model, config, val_batches, bn_batches, bn_images)
        if val_images < 0:
            val_images = sum(len(b[1]) if isinstance(b, (tuple, list)) else len(b) for b in val_batches)
        row = measured_row(config, space, costs, acc, val_images, bn_images, seed)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def sample(model: nn.Module, space: SearchSpace, costs: list[LayerCost], val_batches: Iterable[Batch],
           bn_batches: Iterable[Batch], n: int, seed: int = 0, bn_images: int = 512,
           forms: Literal["all", "first"] = "all") -> list[Row]:
    """The core sampling stage: draw `n` stratified subnets of a trained supernet's model and measure each."""
    return measure_configs(model, space, costs, sample_configs(space, n, seed, forms), val_batches, bn_batches,
                           bn_images, seed)
