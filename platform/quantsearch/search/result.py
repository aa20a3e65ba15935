"""SearchResult: every evaluated config, the non-dominated front, the uniform baselines, finalists, table rows."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from quantsearch.search.budget import QUANTITIES, Budget
from quantsearch.space.subnet import SubnetConfig

OBJECTIVES = ("accuracy", "bitops", "weight_bytes")


@dataclass(frozen=True)
class SearchPoint:
    """One evaluated config: accuracy from the fitness (a fraction), its measures, whether it meets the budget."""

    config: SubnetConfig
    accuracy: float
    bitops: float
    weight_bytes: float
    avg_bits: float
    feasible: bool
    generation: int
    label: str = ""  # 'W4A4' (and the form, when several are searched) for uniform configs, else ''

    def objective(self, name: str) -> float:
        """The value NSGA-II minimises for objective `name` (accuracy is negated)."""
        return -self.accuracy if name == "accuracy" else float(getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {**{k: v for k, v in asdict(self).items() if k != "config"}, "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchPoint:
        """Inverse of to_dict."""
        return cls(SubnetConfig.from_dict(d["config"]), float(d["accuracy"]), float(d["bitops"]),
                   float(d["weight_bytes"]), float(d["avg_bits"]), bool(d["feasible"]), int(d["generation"]),
                   str(d.get("label", "")))


def non_dominated(F: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Mask of the rows of F (minimised, one column per objective) that no other row dominates."""
    n = len(F)
    keep = np.ones(n, dtype=bool)
    for start in range(0, n, 512):  # blocks keep the n x n comparison small in memory
        block = F[start:start + 512]
        le = np.all(F[None, :, :] <= block[:, None, :], axis=-1)  # [i, j]: row j is nowhere worse than row i
        lt = np.any(F[None, :, :] < block[:, None, :], axis=-1)  # [i, j]: row j is better somewhere
        keep[start:start + 512] = ~np.any(le & lt, axis=1)
    return keep


@dataclass(frozen=True)
class SearchResult:
    """What a search found: all evaluated points (in evaluation order), the feasible non-dominated front (by
    BitOps ascending) and the uniform configs with their fitness."""

    evaluated: tuple[SearchPoint, ...]
    front: tuple[SearchPoint, ...]
    uniform: tuple[SearchPoint, ...]
    objectives: tuple[str, ...]
    budget: Budget
    generations: int
    seed: int

    @classmethod
    def build(cls, evaluated: list[SearchPoint], objectives: tuple[str, ...], budget: Budget, generations: int,
              seed: int) -> SearchResult:
        """Result of evaluated points: computes the front over the feasible ones."""
        feasible = [p for p in evaluated if p.feasible]
        F = np.array([[p.objective(o) for o in objectives] for p in feasible], dtype=np.float64)
        front = [p for p, keep in zip(feasible, non_dominated(F.reshape(len(feasible), len(objectives))),
                                      strict=True) if keep]
        front.sort(key=lambda p: (p.bitops, -p.accuracy, p.weight_bytes))
        return cls(tuple(evaluated), tuple(front), tuple(p for p in evaluated if p.label), objectives, budget,
                   generations, seed)

    @property
    def n_evaluations(self) -> int:
        """How many configs the fitness scored (each once)."""
        return len(self.evaluated)

    def best(self) -> SearchPoint:
        """The most accurate config that meets the budget (ties: the cheapest in objective order; on the front)."""
        if not self.front:
            raise ValueError("no evaluated config meets the budget")
        return min(self.front, key=lambda p: tuple(p.objective(o) for o in self.objectives))

    def cost_axis(self) -> str:
        """The cost the front is spread over: the first cost objective (BitOps when accuracy is the only one)."""
        return next((o for o in self.objectives if o != "accuracy"), "bitops")

    def finalists(self, k: int, spread: bool = False) -> tuple[SearchPoint, ...]:
        """k front members by cost ascending, always with best(): the k with the best predicted accuracy (they sit
        next to the budget, where measuring corrects the predictor's ranking), or with `spread` k spread evenly
        over the front's cost range (log scale: a measured Pareto curve)."""
        if k < 1:
            raise ValueError("k must be at least 1")
        axis = self.cost_axis()
        members = sorted(self.front, key=lambda p: (p.objective(axis), -p.accuracy))
        if len(members) <= k:
            return tuple(members)
        if not spread:
            best = self.best()
            top = [best, *sorted((p for p in members if p != best), key=lambda p: -p.accuracy)[:k - 1]]
            return tuple(sorted(top, key=lambda p: (p.objective(axis), -p.accuracy)))
        costs = np.array([p.objective(axis) for p in members])
        pos = np.log(costs) if np.all(costs > 0) else costs  # BitOps span decades: spread them evenly in log
        chosen = [members.index(self.best())]
        for target in np.linspace(pos.min(), pos.max(), k):
            if len(chosen) == k:
                break
            free = [i for i in range(len(members)) if i not in chosen]
            chosen.append(min(free, key=lambda i: (abs(pos[i] - target), i)))
        return tuple(members[i] for i in sorted(chosen))

    def to_rows(self) -> list[dict[str, Any]]:
        """One flat row per evaluated point (pyarrow.Table.from_pylist / Parquet): measures, flags, config JSON."""
        on_front = {p.config for p in self.front}
        return [{"generation": p.generation, "accuracy": p.accuracy, "bitops": p.bitops,
                 "weight_bytes": p.weight_bytes, "avg_bits": p.avg_bits, "feasible": p.feasible,
                 "on_front": p.config in on_front, "uniform": p.label, "summary": p.config.summary(),
                 "config": json.dumps(p.config.to_dict(), separators=(",", ":"))} for p in self.evaluated]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict; front and uniform points are stored as indices into `evaluated`."""
        index = {p.config: i for i, p in enumerate(self.evaluated)}
        return {"objectives": list(self.objectives), "budget": asdict(self.budget), "generations": self.generations,
                "seed": self.seed, "evaluated": [p.to_dict() for p in self.evaluated],
                "front": [index[p.config] for p in self.front], "uniform": [index[p.config] for p in self.uniform]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchResult:
        """Inverse of to_dict."""
        points = tuple(SearchPoint.from_dict(p) for p in d["evaluated"])
        budget = Budget(**{q: d["budget"].get(q) for q in QUANTITIES})
        return cls(points, tuple(points[i] for i in d["front"]), tuple(points[i] for i in d["uniform"]),
                   tuple(d["objectives"]), budget, int(d["generations"]), int(d["seed"]))

    def to_json(self) -> str:
        """JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> SearchResult:
        """Parse JSON text."""
        return cls.from_dict(json.loads(text))

