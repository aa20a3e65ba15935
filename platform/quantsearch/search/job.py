"""The search job: a trained supernet + a fitness source (CQAP or measured) -> front, finalists measured for real.

Writes into its folder: archive-<key>.json (every generation; a killed search with the same question resumes
from it), front.parquet (the
predicted front, finalists with their measured val and test top-1), uniform.parquet (uniform configs measured the
same way), best.json (a SubnetConfig that `dqss --subnet` and `qat --config` read, plus its figures), pareto.png.
The best config is the finalist with the best measured VAL accuracy; test is measured once, for reporting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quantsearch._util import atomic_write_bytes, atomic_write_json
from quantsearch.config import JobSpec, SampleSpec, SearchSpec
from quantsearch.data import ArrayBatches, PreparedData
from quantsearch.data.tables import read_rows, write_rows
from quantsearch.errors import ConfigError
from quantsearch.quant import get_profile
from quantsearch.search.budget import Budget, Measures, resolve_budget
from quantsearch.search.nsga import GenerationStats, search
from quantsearch.search.plot import pareto_png
from quantsearch.search.result import SearchResult
from quantsearch.space import SearchSpace, SubnetConfig
from quantsearch.space.cost import LayerCost
from quantsearch.space.genome import layer_form
from quantsearch.supernet.sample import Row
from quantsearch.supernet.sample_job import MeasureContext, RunChunks, chunks_of, load_context, supernet_checkpoint

Fitness = Callable[[Sequence[SubnetConfig]], np.ndarray]


def search_space(ctx: MeasureContext, profile: str) -> SearchSpace:
    """The supernet's space restricted to `profile`; a profile asking for forms the supernet was not trained on
    is an error naming both."""
    sub = get_profile(profile)
    sup = ctx.space.profile
    missing = [f.short() for f in sub.weight_forms() if f not in sup.weight_forms()]
    missing += [f.short() for f in sub.act_forms() if f not in sup.act_forms()]
    if missing:
        raise ConfigError(f"search.profile '{profile}' needs forms the supernet (profile '{sup.name}') was not "
                          f"trained on ({', '.join(sorted(set(missing))[:4])}); search a profile within it or train "
                          f"the supernet on '{profile}'")
    return SearchSpace.for_model(ctx.model, sub)


class MeasuredCache:
    """Measured val accuracies by config, backed by the sampling table (shared with `sample`): a config is measured
    once, ever; new measurements are appended to the table as each chunk finishes."""

    def __init__(self, ctx: MeasureContext, table: Path, chunk: int, run_chunks: RunChunks | None = None) -> None:
        self.ctx, self.table, self.chunk, self.run_chunks = ctx, table, chunk, run_chunks
        self.rows: list[Row] = read_rows(table) if table.exists() else []
        self.acc = {SubnetConfig.from_json(r["config"]): float(r["val_acc"]) for r in self.rows}
        self.measured = 0

    def __call__(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        """Val top-1 of each config (measuring what is not cached)."""
        todo = list(dict.fromkeys(c for c in configs if c not in self.acc))
        chunks = chunks_of(todo, self.chunk)
        results = self.run_chunks(chunks) if self.run_chunks else (self.ctx.measure(c) for c in chunks)
        for rows in results:
            self.rows += rows
            self.acc.update({SubnetConfig.from_json(r["config"]): float(r["val_acc"]) for r in rows})
            self.measured += len(rows)
            write_rows(self.table, self.rows)
        return np.array([self.acc[c] for c in configs], dtype=np.float64)


@dataclass(frozen=True)
class SearchJobResult:
    """The search and what was measured for real: finalists and uniform configs, val and test."""

    result: SearchResult
    finalists: list[Row]
    uniform: list[Row]
    best: Row
    measurements: int
    search_seconds: float
    measure_seconds: float
    paths: dict[str, Path]


def _measure_for_real(ctx: MeasureContext, configs: list[SubnetConfig], test: ArrayBatches,
                      run_chunks: RunChunks | None, chunk: int) -> list[Row]:
    """Val and test top-1 of each config (test measured here only: finalists and uniform baselines)."""
    if run_chunks is not None:
        return [r for rows in run_chunks(chunks_of(configs, chunk)) for r in rows]
    rows = ctx.measure(configs)
    for row, cfg in zip(rows, configs, strict=True):
        row["test_acc"] = ctx.test_acc(cfg, test)
    return rows


def search_job(spec: JobSpec, data: PreparedData, out_dir: str | Path, fitness: Fitness | None = None,
               run_chunks: RunChunks | None = None, run_chunks_test: RunChunks | None = None,
               progress: Callable[[int, GenerationStats], None] | None = None,
               device: str | torch.device = "cpu") -> SearchJobResult:
    """Search the job's supernet under spec.search.budget with `fitness` (CQAP's predict; None with
    fitness: measured = the supernet measured through the sampling table), then measure the finalists and the
    uniform configs for real (val and test), and write the files listed above."""
    ss = spec.search or SearchSpec()
    sa = spec.sample or SampleSpec()
    seed = spec.seed if ss.seed is None else ss.seed
    out_dir = Path(out_dir)
    if not ss.budget.is_set():
        raise ConfigError("search needs a budget: search.budget.bitops, .weight_bytes or .avg_bits "
                          "(CLI: --budget-bitops W3A3 | --budget-bytes N | --budget-avg-bits B)")
    ctx = load_context(supernet_checkpoint(spec, sa.checkpoint), data, sa.bn_images, sa.val_images,
                       spec.seed if sa.seed is None else sa.seed, device)
    space = search_space(ctx, ss.profile)
    ss = resolve_budget(ss, space, ctx.costs)
    cache = None
    if ss.fitness == "measured" or fitness is None:
        cache = MeasuredCache(ctx, Path(spec.output_dir) / "sample" / "measured.parquet", sa.chunk, run_chunks)
        fitness = cache
    t0 = time.perf_counter()
    result = search(space, ctx.costs, fitness, ss, seed, out_dir / archive_name(ss, seed), progress)
    search_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    test = ArrayBatches(data.test, 512, data.mean, data.std)
    finalists = list(result.finalists(ss.finalists, ss.finalists_spread))
    measured = _measure_for_real(ctx, [p.config for p in finalists], test, run_chunks_test, sa.chunk)
    by_cfg = {SubnetConfig.from_json(r["config"]): r for r in measured}
    fin_rows = [{**by_cfg[p.config], "predicted_acc": p.accuracy, "label": "searched"} for p in finalists]
    best = max(fin_rows, key=lambda r: (r["val_acc"], -r["bitops"]))
    # the uniform baselines, in the best config's network-wide form (every bit-width), measured the same way
    form = layer_form(SubnetConfig.from_json(best["config"])[next(n for n in space.layer_names
                                                                 if n not in dict(space.pinned))])
    bits = sorted(set(space.profile.weight_bits) & set(space.profile.act_bits))
    uniform_cfgs = [space.uniform(b, b, form.granularity, form.w_symmetric, form.a_symmetric) for b in bits]
    measured_u = _measure_for_real(ctx, uniform_cfgs, test, run_chunks_test, sa.chunk)
    by_u = {SubnetConfig.from_json(r["config"]): r for r in measured_u}
    uni_rows = [{**by_u[c], "label": f"W{b}A{b} {form.label()}", "within_budget": _within(c, ctx.costs, ss)}
                for b, c in zip(bits, uniform_cfgs, strict=True)]
    measured += measured_u
    measure_seconds = time.perf_counter() - t0
    paths = _write(out_dir, result, fin_rows, uni_rows, best, ss)
    n = (cache.measured if cache else 0) + len(measured)
    return SearchJobResult(result, fin_rows, uni_rows, best, n, search_seconds, measure_seconds, paths)


def archive_name(ss: SearchSpec, seed: int) -> str:
    """archive-<key>.json: one archive per search question (budget, objectives, forms, profile, fitness,
    population, seed), so a new budget starts afresh while the same question resumes (more generations too)."""
    import hashlib
    import json

    key = {"budget": ss.budget.model_dump(), "objectives": list(ss.objectives), "forms": ss.forms,
           "profile": ss.profile, "fitness": ss.fitness, "population": ss.population, "seed": seed}
    return f"archive-{hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]}.json"


def _within(config: SubnetConfig, costs: list[LayerCost], ss: SearchSpec) -> bool:
    return Budget.from_spec(ss.budget).fits(Measures.of(costs, config))


def _write(out_dir: Path, result: SearchResult, finalists: list[Row], uniform: list[Row], best: Row,
           ss: SearchSpec) -> dict[str, Path]:
    measured = {SubnetConfig.from_json(r["config"]): float(r["val_acc"]) for r in finalists}
    front_rows = result.to_rows()  # every evaluated point, flagged on_front; finalists with their measurements
    fin = {SubnetConfig.from_json(r["config"]): r for r in finalists}
    for point, row in zip(result.evaluated, front_rows, strict=True):
        match = fin.get(point.config)
        row["measured_val_acc"] = match["val_acc"] if match else None
        row["measured_test_acc"] = match["test_acc"] if match else None
    paths = {"front": out_dir / "front.parquet", "uniform": out_dir / "uniform.parquet",
             "best": out_dir / "best.json", "pareto": out_dir / "pareto.png", "result": out_dir / "search.json"}
    write_rows(paths["front"], front_rows)
    write_rows(paths["uniform"], uniform)
    cfg = SubnetConfig.from_json(best["config"])
    atomic_write_json(paths["best"], {**cfg.to_dict(), "predicted_acc": best["predicted_acc"],
                                      "measured_val_acc": best["val_acc"], "measured_test_acc": best["test_acc"],
                                      "bitops": best["bitops"], "weight_bytes": best["weight_bytes"],
                                      "avg_bits": best["avg_bits"], "budget": ss.budget.model_dump()})
    atomic_write_bytes(paths["pareto"], pareto_png(result, measured))
    atomic_write_json(paths["result"], result.to_dict())
    return paths
