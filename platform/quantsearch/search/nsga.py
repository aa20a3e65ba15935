"""The search stage: NSGA-II (pymoo) over the integer genome of a space, under a budget, resumable per generation.

Objectives come from the spec: accuracy maximised (the fitness callable scores a batch of configs once per
generation, new configs only; a config is never scored twice), BitOps and/or weight bytes minimised. The budget
becomes pymoo inequality constraints; configs over budget are not scored at all (NSGA-II compares them by their
constraint violation alone, so their accuracy would never be read), except the uniform configs, scored once as the
baselines a plot and a report compare against. Operators: SBX and polynomial mutation on floats, rounded back to
integers, duplicates eliminated. spec.generations counts the first population as generation 1 (pymoo's count).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair

from quantsearch.config import SearchSpec
from quantsearch.errors import ConfigError
from quantsearch.search.archive import (
    ArchiveState,
    Evaluated,
    check_resumable,
    crowding_out,
    load_archive,
    save_archive,
    search_settings,
)
from quantsearch.search.budget import Budget, Measures, check_costs, resolve_budget
from quantsearch.search.population import initial_population
from quantsearch.search.result import OBJECTIVES, SearchPoint, SearchResult
from quantsearch.space.cost import LayerCost
from quantsearch.space.genome import Genome, IntArray
from quantsearch.space.space import SearchSpace
from quantsearch.space.subnet import SubnetConfig

# a batch of configs -> one accuracy fraction each, in order (a list or a numpy array)
Fitness = Callable[[Sequence[SubnetConfig]], Iterable[float]]

# integer genes span a few values, so wide steps (small eta) keep the offspring from rounding back to a parent
SBX_ETA, PM_ETA, SBX_PROB = 3.0, 3.0, 0.9


@dataclass(frozen=True)
class GenerationStats:
    """What the search reports after each generation (the archive is written by then)."""

    generations: int
    n_evaluations: int
    best_accuracy: float | None
    front_size: int


Progress = Callable[[int, GenerationStats], None]


class _Book:
    """The fitness cache and the evaluation log, in order: every config is scored once."""

    def __init__(self, genome: Genome, costs: list[LayerCost], budget: Budget, fitness: Fitness) -> None:
        self.genome, self.costs, self.budget, self.fitness = genome, costs, budget, fitness
        self.scores: dict[SubnetConfig, float] = {}
        self.log: list[tuple[SubnetConfig, Evaluated]] = []
        self._measures: dict[SubnetConfig, Measures] = {}
        self._genes: dict[SubnetConfig, tuple[int, ...]] = {}
        self.generation = 0

    def decode(self, x: npt.ArrayLike) -> SubnetConfig:
        """genome.decode, remembering each config's genes (encode would check the space again, at a cost)."""
        genes = tuple(int(g) for g in np.asarray(x).round())
        config = self.genome.decode(np.array(genes, dtype=np.int64))
        self._genes[config] = genes
        return config

    def measures(self, config: SubnetConfig) -> Measures:
        """The config's measures (cached: decoding and costing repeat across generations)."""
        if config not in self._measures:
            self._measures[config] = Measures.of(self.costs, config)
        return self._measures[config]

    def violation(self, x: IntArray) -> float:
        """Summed relative excess over the budget (0: fits)."""
        return sum(max(g, 0.0) for g in self.budget.constraints(self.measures(self.decode(x))))

    def score(self, configs: Sequence[SubnetConfig]) -> None:
        """One fitness call on the configs not scored yet (none: no call)."""
        new = list(dict.fromkeys(c for c in configs if c not in self.scores))
        if not new:
            return
        values = [float(v) for v in self.fitness(new)]
        if len(values) != len(new):
            raise ValueError(f"the fitness returned {len(values)} values for {len(new)} configs")
        for config, value in zip(new, values, strict=True):
            if not math.isfinite(value):
                raise ValueError(f"the fitness returned {value} for {config.summary()}")
            self.scores[config] = value
            self.log.append((config, Evaluated(self._genes[config], value, self.generation)))

    def restore(self, evaluated: Sequence[Evaluated]) -> None:
        """Take an archive's scores as if this book had computed them."""
        for e in evaluated:
            config = self.decode(np.array(e.genes))
            self.scores[config] = e.accuracy
            self.log.append((config, e))

    def points(self) -> list[SearchPoint]:
        """Every scored config as a SearchPoint, in scoring order."""
        labels = {tuple(int(g) for g in x): label
                  for x, label in zip(self.genome.uniform_genomes(), self.genome.uniform_labels(), strict=True)}
        out = []
        for config, e in self.log:
            m = self.measures(config)
            out.append(SearchPoint(config, e.accuracy, m.bitops, m.weight_bytes, m.avg_bits, self.budget.fits(m),
                                   e.generation, labels.get(e.genes, "")))
        return out


class _Problem(Problem):
    """pymoo's view of the search: integer genes, F = objectives (minimised), G = budget constraints."""

    def __init__(self, book: _Book, objectives: tuple[str, ...]) -> None:
        g = book.genome
        super().__init__(n_var=g.n_var, n_obj=len(objectives), n_ieq_constr=len(book.budget.limits()),
                         xl=g.xl, xu=g.xu, vtype=int)
        self.book, self.objectives = book, objectives
        self.extra: list[SubnetConfig] = []  # scored with the next batch (the uniform baselines)

    def _evaluate(self, X: npt.NDArray[Any], out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        book = self.book
        configs = [book.decode(x) for x in X]
        measures = [book.measures(c) for c in configs]
        fits = [book.budget.fits(m) for m in measures]
        book.score([c for c, ok in zip(configs, fits, strict=True) if ok] + self.extra)
        self.extra = []
        # over-budget configs are never ranked by their objectives (see the module docstring): 0 stands in
        acc = [book.scores[c] if ok else 0.0 for c, ok in zip(configs, fits, strict=True)]
        out["F"] = np.array([[-a if o == "accuracy" else m.get(o) for o in self.objectives]
                             for a, m in zip(acc, measures, strict=True)], dtype=np.float64)
        if self.n_ieq_constr:
            out["G"] = np.array([book.budget.constraints(m) for m in measures], dtype=np.float64)


def check_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    """The spec's objectives, checked: accuracy among them, each known and listed once."""
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown or "accuracy" not in objectives or len(set(objectives)) != len(objectives):
        raise ConfigError(f"search objectives {list(objectives)} must include accuracy, once each, from "
                          f"{list(OBJECTIVES)}; e.g. [accuracy, bitops]")
    return tuple(objectives)


def _nonneg(seed: int) -> int:
    return seed % (2**63)  # numpy seeds must be non-negative; job seeds may not be


def search(space: SearchSpace, costs: list[LayerCost], fitness: Fitness, spec: SearchSpec, seed: int,
           archive_path: Path | None = None, progress: Progress | None = None) -> SearchResult:
    """NSGA-II mixed-precision search of `space` under spec.budget; resumes from `archive_path` when it exists.

    `fitness` maps a batch of configs to accuracy fractions; `costs` are the layers' static costs (layer_costs).
    The space decides the profile (spec.profile is the job wrapper's to apply). The same inputs and seed give the
    same result, and so does a search interrupted after any generation and resumed from its archive."""
    genome = Genome.for_space(space, spec.forms)
    check_costs(genome, costs)
    spec = resolve_budget(spec, space, costs)  # 'W3A3' -> that uniform config's BitOps / bytes
    objectives = check_objectives(spec.objectives)
    budget = Budget.from_spec(spec.budget)
    budget.check_reachable(genome, costs)  # before any evaluation: an impossible budget costs nothing
    book = _Book(genome, costs, budget, fitness)
    problem = _Problem(book, objectives)
    settings = search_settings(genome, costs, spec)
    first = initial_population(genome, spec.population, book.violation,
                               np.random.default_rng([_nonneg(seed), 1]))
    algorithm = NSGA2(pop_size=spec.population, sampling=first, eliminate_duplicates=True, seed=_nonneg(seed),
                      crossover=SBX(prob=SBX_PROB, eta=SBX_ETA, vtype=float, repair=RoundingRepair()),
                      mutation=PM(eta=PM_ETA, vtype=float, repair=RoundingRepair()))
    algorithm.setup(problem, termination=("n_gen", spec.generations))
    done = 0
    if archive_path is not None and Path(archive_path).exists():
        state = load_archive(Path(archive_path))
        check_resumable(Path(archive_path), state, settings, seed)
        book.restore(state.evaluated)
        done = state.generation
        _restore(algorithm, problem, state)
    for generation in range(done + 1, spec.generations + 1):
        book.generation = generation
        infills = algorithm.ask()
        if infills is None or len(infills) == 0:
            break  # mating found no new genome: the space is exhausted around the population
        if generation == 1:
            problem.extra = [book.decode(x) for x in genome.uniform_genomes()]
        algorithm.evaluator.eval(problem, infills)
        algorithm.tell(infills=infills)
        done = generation
        if archive_path is not None:
            save_archive(Path(archive_path), _state(algorithm, book, settings, seed, generation))
        if progress is not None:
            progress(generation, _stats(book, objectives, spec.generations))
    return SearchResult.build(book.points(), objectives, budget, done, seed)


def _state(algorithm: Any, book: _Book, settings: dict[str, Any], seed: int, generation: int) -> ArchiveState:
    """The archive after `generation`."""
    pop = algorithm.pop
    ranks = [None if r is None else int(r) for r in pop.get("rank")]
    return ArchiveState(settings, seed, generation, tuple(e for _, e in book.log),
                        tuple(tuple(int(g) for g in x) for x in pop.get("X")), tuple(ranks),
                        tuple(crowding_out(c) for c in pop.get("crowding")),
                        dict(algorithm.random_state.bit_generator.state))


def _restore(algorithm: Any, problem: _Problem, state: ArchiveState) -> None:
    """Put the algorithm where it stood after state.generation: population (re-scored from the cache: no fitness
    call), rank and crowding as the tournament reads them, the generation counter and the random generator."""
    pop = Population.new(X=np.array(state.population, dtype=np.int64))
    algorithm.evaluator.eval(problem, pop)
    pop.set("rank", np.array(state.rank, dtype=object))
    # None was infinity (a boundary point) where a rank exists, else an over-budget point never ranked
    pop.set("crowding", np.array([math.inf if c is None and r is not None else c
                                  for r, c in zip(state.rank, state.crowding, strict=True)], dtype=object))
    algorithm.pop = pop
    algorithm.is_initialized = True
    algorithm.n_iter = state.generation + 1
    algorithm.start_time = time.time()  # pymoo reads it when the last generation ends
    algorithm.random_state.bit_generator.state = state.rng


def _stats(book: _Book, objectives: tuple[str, ...], generations: int) -> GenerationStats:
    """Counts for the progress callback."""
    so_far = SearchResult.build(book.points(), objectives, book.budget, 0, 0)
    return GenerationStats(generations, len(so_far.evaluated), so_far.best().accuracy if so_far.front else None,
                           len(so_far.front))
