"""The quantities a search budgets and plots (BitOps, weight bytes, mean bits), and the budget's constraints."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from quantsearch.config import SearchBudget, SearchSpec
from quantsearch.errors import ConfigError
from quantsearch.space.cost import LayerCost, subnet_cost
from quantsearch.space.genome import Genome
from quantsearch.space.space import SearchSpace
from quantsearch.space.subnet import SubnetConfig

QUANTITIES = ("bitops", "weight_bytes", "avg_bits")


def avg_bits(config: SubnetConfig) -> float:
    """Mean over ALL layers (pinned included) of (w + a) / 2."""
    w, a = config.avg_bits()
    return (w + a) / 2


@dataclass(frozen=True)
class Measures:
    """What a config costs: BitOps, bytes of weights, mean of per-layer (w+a)/2 bits."""

    bitops: float
    weight_bytes: float
    avg_bits: float

    @classmethod
    def of(cls, costs: list[LayerCost], config: SubnetConfig) -> Measures:
        """Measure `config` with the layers' static costs."""
        c = subnet_cost(costs, config)
        return cls(c.bitops, c.weight_bytes, avg_bits(config))

    def get(self, quantity: str) -> float:
        """One quantity by name ('bitops', 'weight_bytes' or 'avg_bits')."""
        return float(getattr(self, quantity))


@dataclass(frozen=True)
class Budget:
    """Upper limits on the measures; None leaves a quantity free."""

    bitops: float | None = None
    weight_bytes: float | None = None
    avg_bits: float | None = None

    @classmethod
    def from_spec(cls, spec: SearchBudget) -> Budget:
        """The frozen twin of the job spec's budget section (numbers only: a budget given as a uniform config,
        'W3A3', is resolved to its cost first: resolve_budget)."""
        if isinstance(spec.bitops, str) or isinstance(spec.weight_bytes, str):
            raise ConfigError(f"budget {spec.bitops or spec.weight_bytes} names a uniform config: resolve it to a "
                              "number first (search.budget.resolve_budget)")
        return cls(spec.bitops, spec.weight_bytes, spec.avg_bits)

    def limits(self) -> list[tuple[str, float]]:
        """(quantity, limit) for every budgeted quantity, in QUANTITIES order."""
        return [(f.name, float(v)) for f in fields(self) if (v := getattr(self, f.name)) is not None]

    def constraints(self, m: Measures) -> list[float]:
        """pymoo inequality constraints (<= 0 feasible), relative to each limit so that their violations add up
        on one scale."""
        return [(m.get(q) - limit) / limit for q, limit in self.limits()]

    def fits(self, m: Measures) -> bool:
        """Whether every budgeted quantity is within its limit."""
        return all(m.get(q) <= limit for q, limit in self.limits())

    def check_reachable(self, genome: Genome, costs: list[LayerCost]) -> None:
        """Raise ConfigError naming the smallest reachable value when a limit is below it.

        Every quantity grows with the bits of every layer and none depends on the form, so the config with every
        free layer at the lowest bits is the smallest in all quantities at once: each limit reachable on its own
        means all are reachable together."""
        w, a = genome.w_bits[0], genome.a_bits[0]
        least = Measures.of(costs, genome.decode(np.zeros(genome.n_var, dtype=np.int64)))
        pinned = f"; pinned layers at {sorted({b for _, b in genome.space.pinned})} bits" if genome.space.pinned else ""
        for q, limit in self.limits():
            if limit < least.get(q):
                raise ConfigError(f"budget {q}={limit:.4g} is below the smallest reachable {least.get(q):.4g} "
                                  f"(every free layer at W{w}A{a}{pinned}); raise it")


def check_costs(genome: Genome, costs: list[LayerCost]) -> None:
    """The layer costs must name exactly the space's layers (a cost for another model would mislead silently)."""
    names = [c.name for c in costs]
    missing = [n for n in genome.space.layer_names if n not in names]
    unknown = [n for n in names if n not in genome.space.layer_names]
    if missing or unknown or len(set(names)) != len(names):
        raise ConfigError(f"layer costs do not match the search space (missing {missing[:3]}, unknown {unknown[:3]}, "
                          f"{len(names) - len(set(names))} repeated); compute them with layer_costs on this model")


def resolve_budget(spec: SearchSpec, space: SearchSpace, costs: list[LayerCost]) -> SearchSpec:
    """Budgets given as a uniform config ('W3A3') become that config's BitOps / weight bytes in this space (the
    profile's first form; first/last layers at their pinned bits)."""
    from quantsearch.space.subnet import parse_uniform

    b = spec.budget
    values: dict[str, Any] = {}
    for key, attr in (("bitops", "bitops"), ("weight_bytes", "weight_bytes")):
        v = getattr(b, key)
        if isinstance(v, str):
            wf, af = parse_uniform(v)
            cost = subnet_cost(costs, space.uniform(wf.bits, af.bits))
            values[key] = float(getattr(cost, attr))
    return spec.model_copy(update={"budget": b.model_copy(update=values)}) if values else spec
