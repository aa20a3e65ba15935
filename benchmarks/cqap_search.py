"""CQAP + NSGA-II mixed-precision search on the EQ-Net supernet (issue 11): predictor quality, searched configs
against uniform configs, random search and NVIDIA ModelOpt auto_quantize at equal cost, search time, throughput.

usage: RAY_AUTH_MODE=disabled python benchmarks/cqap_search.py [--quick] [--seed N] [--workers N]
           [--random-measurements N] [--no-modelopt] [--no-throughput]

What is measured (every accuracy is a supernet subnet after BN recalibration on `bn_images` seeded training
images; VAL top-1 for everything that fits or selects, TEST top-1 only once per reported config):
1. Sampling: `subnets` subnets drawn by sample_configs(forms="all") (stratified over every network-wide form and
   over average bits), measured on val by the sampling job (its Parquet table is the cache: a re-run measures
   only what is new; <run>/sample/measured.parquet also caches every later val measurement of this script).
2. Predictors: CQAP (MLP) and GBR fitted on the same seeded split (25 % of the subnets held out), Kendall tau,
   Spearman rho and RMSE overall and within BitOps quantile bands, beside the avg-bits and BitOps proxies.
   The best predictor (held-out tau) is refit on every sampled row (as the predictor job does) and drives
   NSGA-II.
3. Search at the BitOps of uniform W2A2 and W3A3 (first/last layer pinned at 8 bits in every config): NSGA-II
   over all network-wide forms, `finalists` front members measured on val, the best by val measured on test.
   Baselines: the uniform configs of those bit-widths in every form (val and test), the main form being
   per-channel symmetric weights + affine activations as in eqnet_quality's table; random search with the same
   number of real measurements as ours (sampled subnets + finalists): random configs within the budget,
   measured on val, best by val, test once. Dominance: no finalist may be dominated (measured val, BitOps) by
   a measured uniform config.
4. ModelOpt peer (benchmarks/peer_modelopt.py: W8A8/W4A4 per-channel weights, first/last pinned at 8 bits) at
   effective weight bits 6.0 and 4.8, and our search at the same weight budget (weight bytes = bits / 8 x all
   conv/linear weights) in a {4, 8}-bit space with per-channel symmetric weights and affine activations; also
   under ModelOpt's pick's BitOps as a second limit, and ModelOpt's layer allocation measured on our supernet.
5. Throughput: the same subnets measured as Ray Tune trials (tune_chunks) with 1 and 2 workers.

Modes:
- full (default): the supernet runs/bench/eqnet-eqnet/supernet.pt of `eqnet_quality.py` (full mode), 900
  subnets (225 held out), NSGA-II population 64 x 30 generations, 5 finalists, all 5,000 val images;
- --quick: trains its own supernet into runs/bench/cqap-quick/ (resnet8 from runs/bench/fp32-resnet8/model.pt,
  1 epoch on 4,000 training images), 120 subnets, population 32 x 10 generations, 3 finalists, 2,000 val images.
Writes benchmarks/results/cqap_search.json (or cqap_search_quick.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, RUNS, write_result
from quantsearch._util import atomic_write_json
from quantsearch.config import DataSpec, JobSpec, PredictorSpec, SearchBudget, SearchSpec
from quantsearch.data import ArrayBatches, PreparedData, prepare_data
from quantsearch.predictor.job import compare_predictors, fit_predictor_job, format_comparison, summary_metrics
from quantsearch.quant.forms import LayerConfig, QuantForm
from quantsearch.quant.profiles import BackendProfile
from quantsearch.search import Budget, Measures, SearchPoint, search
from quantsearch.search.job import MeasuredCache
from quantsearch.search.population import random_genome
from quantsearch.space import NetForm, SearchSpace, SubnetConfig, net_forms, subnet_cost
from quantsearch.space.genome import Genome
from quantsearch.supernet.sample import Row, sample_configs
from quantsearch.supernet.sample_job import MeasureContext, chunks_of, context_args, load_context, sample_job
from quantsearch.train.checkpoint import load_checkpoint

MAIN_FORM = NetForm("per_channel", True, False)  # eqnet_quality's table: per-channel sym weights, affine acts
BUDGETS = (2, 3)  # uniform W<b>A<b> BitOps
MARGIN = {2: 0.005, 3: 0.0}  # searched test >= uniform (main form) test + margin
MODELOPT_BITS = (6.0, 4.8)
# the {4, 8}-bit space ModelOpt's W8A8 / W4A4 formats are compared in (no profile in profiles.yaml has it)
PROFILE_48 = BackendProfile("bench-w48-pc", "benchmark: 4/8-bit weights and activations, per-channel symmetric "
                            "weights, affine activations", weight_bits=(4, 8), act_bits=(4, 8),
                            weight_granularity=("per_channel",), weight_symmetric=(True,), act_symmetric=(False,))
EPS = 1e-9


@dataclass(frozen=True)
class Mode:
    """What differs between full and quick mode (everything else is one code path)."""

    name: str
    out: Path
    subnets: int
    population: int
    generations: int
    finalists: int
    val_images: int | None
    bn_images: int = 512
    holdout: float = 0.25
    chunk: int = 25
    throughput_subnets: int = 24
    throughput_chunk: int = 6


FULL = Mode("full", RUNS / "cqap", 900, 64, 30, 5, None)
QUICK = Mode("quick", RUNS / "cqap-quick", 120, 32, 10, 3, 2000)
QUICK_SUPERNET = {"epochs": 1, "train_images": 4000, "n_random": 2, "profile": "generic"}


def _clean(v: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, recursively."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _pct(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.2f}%"


def _pts(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:+.2f} pts"


def _key(config: SubnetConfig) -> str:
    return json.dumps(config.to_dict(), separators=(",", ":"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- supernet and caches

def _supernet(mode: Mode, data: PreparedData, seed: int, fp32: Path) -> tuple[Path, dict[str, Any]]:
    """The supernet checkpoint (quick: trained here once, reused after) and facts about it."""
    if mode.name == "quick":
        from quantsearch.supernet import train_supernet_local

        ckpt = mode.out / "supernet.pt"
        epochs = QUICK_SUPERNET["epochs"]
        train_s = None
        if not ckpt.exists() or int(load_checkpoint(ckpt, kind="supernet")["epoch"]) < epochs:
            spec = JobSpec.model_validate({"name": "cqap-quick", "seed": seed, "output_dir": str(RUNS),
                                           "model": {"name": "resnet8"},
                                           "supernet": {**QUICK_SUPERNET, "checkpoint": str(fp32)}})
            t0 = time.perf_counter()
            train_supernet_local(spec, data, mode.out, progress=False)
            train_s = round(time.perf_counter() - t0, 1)
            print(f"quick supernet: {epochs} epoch on {QUICK_SUPERNET['train_images']} images in "
                  f"{train_s:.0f}s -> {ckpt.relative_to(ROOT)}")
        trained = {"trained_by": "this script (--quick)", **QUICK_SUPERNET, "fp32": str(fp32.relative_to(ROOT)),
                   "train_seconds_this_run": train_s}
    else:
        ckpt = RUNS / "eqnet-eqnet" / "supernet.pt"
        if not ckpt.exists():
            sys.exit(f"{ckpt} is missing: train the supernet first (python benchmarks/eqnet_quality.py)")
        trained = {"trained_by": "benchmarks/eqnet_quality.py (full mode)"}
        record = ROOT / "benchmarks" / "results" / "eqnet_quality.json"
        if record.exists():
            written = json.loads(record.read_text()).get("date", "")
            trained["eqnet_quality_json_date"] = written
            if written < time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ckpt.stat().st_mtime - 60)):
                trained["warning"] = ("supernet.pt is newer than eqnet_quality.json: its training may still be "
                                      "running, or it is not the supernet that record describes")
                print(f"WARNING: {trained['warning']}")
    payload = load_checkpoint(ckpt, kind="supernet")
    info = {"path": str(ckpt.relative_to(ROOT)), "sha256": _sha256(ckpt),
            "mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ckpt.stat().st_mtime)),
            "epochs_trained": int(payload["epoch"]), "profile": payload["profile"], "model": payload["model_name"],
            **trained}
    print(f"supernet {info['path']} ({info['epochs_trained']} epochs, profile {info['profile']}, written "
          f"{info['mtime']}, sha256 {info['sha256'][:12]})")
    return ckpt, info


def _check_cache(out: Path, key: dict[str, Any]) -> None:
    """The measured table and test cache belong to one supernet and one measuring setting: set stale ones aside."""
    path = out / "cache_key.json"
    if path.exists() and json.loads(path.read_text()) != key:
        stale = out / f"stale-{time.strftime('%Y%m%d-%H%M%S')}"
        stale.mkdir(parents=True)
        for name in ("sample", "test_acc.json", "predictor"):
            if (out / name).exists():
                os.replace(out / name, stale / name)
        print(f"the supernet or the measuring settings changed: old measurements moved to {stale.relative_to(ROOT)}")
    atomic_write_json(path, key)


class TestCache:
    """Test top-1 by config (only configs reported once: the best of each method and the baselines)."""

    def __init__(self, ctx: MeasureContext, data: PreparedData, path: Path) -> None:
        self.ctx, self.path = ctx, path
        self.test = ArrayBatches(data.test, 512, data.mean, data.std)
        self.acc: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
        self.measured = 0

    def __call__(self, config: SubnetConfig) -> float:
        k = _key(config)
        if k not in self.acc:
            self.acc[k] = self.ctx.test_acc(config, self.test)
            self.measured += 1
            atomic_write_json(self.path, self.acc)
        return self.acc[k]


# ---------------------------------------------------------------- stages

def _sample(spec: JobSpec, data: PreparedData, mode: Mode, seed: int, workers: int,
            space: SearchSpace) -> tuple[list[Row], dict[str, Any]]:
    """Run the sampling job (cached table) and return the rows of this draw, in draw order, and facts."""
    run_chunks = None
    if workers:
        from quantsearch.distributed.tune_sample import tune_chunks

        run_chunks = tune_chunks(context_args(spec), workers, mode.out / "tune", "sample")
    done = [0]

    def on_chunk(i: int, rows: list[Row]) -> None:
        done[0] += len(rows)
        print(f"  sampled chunk {i + 1}: {done[0]} new subnets measured", flush=True)

    res = sample_job(spec, data, mode.out / "sample", run_chunks=run_chunks, on_chunk=on_chunk, device="cpu")
    drawn = sample_configs(space, mode.subnets, seed, "all")
    by_cfg = {SubnetConfig.from_json(r["config"]): r for r in res.rows}
    rows = [by_cfg[c] for c in drawn]
    acc = np.array([r["val_acc"] for r in rows])
    facts = {"subnets": len(rows), "new_measurements": res.new, "seconds": round(res.seconds, 1),
             "seconds_per_new_subnet": round(res.seconds / res.new, 2) if res.new else None,
             "by_form": dict(Counter(r["form"] for r in rows)),
             "avg_bits_range": [min(r["avg_bits"] for r in rows), max(r["avg_bits"] for r in rows)],
             "val_acc_range": [float(acc.min()), float(acc.max())], "val_acc_mean": float(acc.mean())}
    print(f"sampled {len(rows)} subnets ({res.new} measured now, {res.seconds:.0f}s): val top-1 "
          f"{_pct(acc.min())}..{_pct(acc.max())}, avg bits {facts['avg_bits_range'][0]:.2f}.."
          f"{facts['avg_bits_range'][1]:.2f}, forms {facts['by_form']}")
    return rows, facts


def _predictors(rows: list[Row], space: SearchSpace, mode: Mode, seed: int) -> tuple[Any, dict[str, Any]]:
    """Both predictors on one split; the best (held-out tau) refit on every row for the search."""
    spec = PredictorSpec(model="mlp", holdout=mode.holdout, seed=seed)
    t0 = time.perf_counter()
    reports = compare_predictors(rows, space, spec, seed)
    print(format_comparison(reports))
    out: dict[str, Any] = {}
    for kind, r in reports.items():
        m = summary_metrics(r)
        bands = [{"n": b.n, "bitops": [b.bitops_lo, b.bitops_hi], "tau": b.tau, "rho": b.rho,
                  "tau_avg_bits": b.tau_avg_bits, "tau_bitops": b.tau_bitops} for b in r.bands]
        beats = [b.tau > max(b.tau_avg_bits if math.isfinite(b.tau_avg_bits) else -1,
                             b.tau_bitops if math.isfinite(b.tau_bitops) else -1)
                 for b in r.bands if math.isfinite(b.tau)]
        out[kind] = {"n_train": r.n_train, "n_heldout": r.n_heldout, "features": r.features,
                     "tau": m["heldout.tau"], "rho": m["heldout.rho"], "rmse": m["heldout.rmse"],
                     "band_tau": m["heldout.band_tau"],
                     "proxy_avg_bits": {"tau": m["proxy.avg_bits.tau"], "rho": m["proxy.avg_bits.rho"],
                                        "band_tau": m["proxy.avg_bits.band_tau"]},
                     "proxy_bitops": {"tau": m["proxy.bitops.tau"], "rho": m["proxy.bitops.rho"],
                                      "band_tau": m["proxy.bitops.band_tau"]},
                     "bands": bands, "bands_beating_both_proxies": f"{sum(beats)}/{len(beats)}",
                     "fit_seconds": r.fit_seconds}
        for i, b in enumerate(bands):
            print(f"  {kind} band {i + 1} (n={b['n']}, BitOps {b['bitops'][0]:.3g}..{b['bitops'][1]:.3g}): tau "
                  f"{b['tau']:.3f}  avg-bits proxy {b['tau_avg_bits']:.3f}  BitOps proxy {b['tau_bitops']:.3f}")
    best = max(out, key=lambda k: (out[k]["tau"] if math.isfinite(out[k]["tau"]) else -2, k == "mlp"))
    job = fit_predictor_job(rows, space, spec.model_copy(update={"model": best}), mode.out / "predictor", seed,
                            refit=True)
    seconds = time.perf_counter() - t0
    print(f"best predictor: {best} (held-out tau {out[best]['tau']:.3f}); refit on all {len(rows)} rows for the "
          f"search; predictors fitted in {seconds:.0f}s")
    return job.predictor, {"models": out, "best": best, "holdout": mode.holdout, "epochs": spec.epochs,
                           "bands": spec.bands, "seconds": round(seconds, 1),
                           "search_uses": f"{best} refit on all {len(rows)} sampled subnets (predictor job default)"}


def _search(space: SearchSpace, ctx: MeasureContext, predictor: Any, budget: SearchBudget, mode: Mode,
            seed: int) -> tuple[list[SearchPoint], float, int]:
    """NSGA-II driven by the predictor: (finalists, seconds, evaluations)."""
    spec = SearchSpec(budget=budget, population=mode.population, generations=mode.generations,
                      finalists=mode.finalists, forms="all", seed=seed)
    t0 = time.perf_counter()
    result = search(space, ctx.costs, predictor.predict, spec, seed)
    return list(result.finalists(mode.finalists)), time.perf_counter() - t0, result.n_evaluations


def _pick(configs: Sequence[SubnetConfig], val: np.ndarray, ctx: MeasureContext) -> int:
    """Index of the best val accuracy (ties: fewer BitOps, then first)."""
    bitops = [subnet_cost(ctx.costs, c).bitops for c in configs]
    return min(range(len(configs)), key=lambda i: (-val[i], bitops[i], i))


def _point(config: SubnetConfig, ctx: MeasureContext, val: float, test: float | None = None,
           predicted: float | None = None) -> dict[str, Any]:
    c = subnet_cost(ctx.costs, config)
    w, a = config.avg_bits()
    total = sum(lc.params for lc in ctx.costs)
    return {"val_acc": val, "test_acc": test, "predicted_acc": predicted, "bitops": c.bitops,
            "weight_bytes": c.weight_bytes, "effective_weight_bits": 8 * c.weight_bytes / total,
            "avg_w_bits": w, "avg_a_bits": a, "summary": config.summary(),
            "layers": {n: lc.short() for n, lc in config.layers}}


def _random_configs(space: SearchSpace, ctx: MeasureContext, budget: Budget, n: int,
                    rng: np.random.Generator) -> list[SubnetConfig]:
    """n distinct random configs within the budget: the search's own random genomes (every form, bits capped at
    a random level when the space's top is over budget), rejected when over budget; fewer when the budget holds
    fewer configs (50 draws per wanted config)."""
    genome = Genome.for_space(space, "all")
    biased = not budget.fits(Measures.of(ctx.costs, genome.decode(genome.xu)))
    seen: set[tuple[int, ...]] = set()
    out: list[SubnetConfig] = []
    for _ in range(50 * n):
        if len(out) >= n:
            break
        x = random_genome(genome, rng, biased)
        if tuple(x) in seen:
            continue
        seen.add(tuple(x))
        cfg = genome.decode(x)
        if budget.fits(Measures.of(ctx.costs, cfg)):
            out.append(cfg)
    return out


def _dominated(point: dict[str, Any], uniform: dict[str, dict[str, Any]]) -> list[str]:
    """Uniform configs that dominate `point` on (measured val higher, BitOps lower)."""
    return [lab for lab, u in uniform.items()
            if u["bitops"] <= point["bitops"] * (1 + EPS) and u["val_acc"] >= point["val_acc"]
            and (u["bitops"] < point["bitops"] * (1 - EPS) or u["val_acc"] > point["val_acc"])]


def _budget_section(bits: int, space: SearchSpace, ctx: MeasureContext, predictor: Any, cache: MeasuredCache,
                    test: TestCache, mode: Mode, seed: int, n_random: int) -> dict[str, Any]:
    """Search, uniform baselines (every form) and random search at the BitOps of uniform W<bits>A<bits>."""
    label = f"W{bits}A{bits}"
    main_cfg = space.uniform(bits, bits, MAIN_FORM.granularity, MAIN_FORM.w_symmetric, MAIN_FORM.a_symmetric)
    limit = subnet_cost(ctx.costs, main_cfg).bitops
    budget = Budget(bitops=limit)
    print(f"\n== budget: BitOps of uniform {label} = {limit:.4g} (first/last layer at 8 bits)")

    # uniform baselines, every form, every bit-width up to the budget's (they are the only uniform configs that fit)
    uni_cfgs = {f"W{b}A{b} {f.label()}": space.uniform(b, b, f.granularity, f.w_symmetric, f.a_symmetric)
                for b in sorted({2, bits}) for f in net_forms(space)}
    uni_val = cache(list(uni_cfgs.values()))
    uniform = {lab: _point(c, ctx, float(v), test(c)) for (lab, c), v in zip(uni_cfgs.items(), uni_val, strict=True)}
    main_lab = f"{label} {MAIN_FORM.label()}"
    at_bits = {lab: u for lab, u in uniform.items() if lab.startswith(label + " ")}
    best_uni_val = max(at_bits, key=lambda lab: (at_bits[lab]["val_acc"], lab == main_lab))
    best_uni_test = max(at_bits, key=lambda lab: (at_bits[lab]["test_acc"], lab == main_lab))
    for lab, u in at_bits.items():
        print(f"  uniform {lab:22s} val {_pct(u['val_acc'])}  test {_pct(u['test_acc'])}")

    # predictor + NSGA-II
    finalists, search_s, n_eval = _search(space, ctx, predictor, SearchBudget(bitops=limit), mode, seed)
    t0 = time.perf_counter()
    fin_val = cache([p.config for p in finalists])
    best_i = _pick([p.config for p in finalists], fin_val, ctx)
    fin = [_point(p.config, ctx, float(v), predicted=p.accuracy) for p, v in zip(finalists, fin_val, strict=True)]
    fin[best_i]["test_acc"] = test(finalists[best_i].config)
    fin_measure_s = time.perf_counter() - t0
    for f in fin:
        f["dominated_by_uniform"] = _dominated(f, uniform)
    ours = fin[best_i]
    print(f"  search: {n_eval} predictor evaluations in {search_s:.1f}s; {len(fin)} finalists measured on val "
          f"in {fin_measure_s:.0f}s")
    for i, f in enumerate(fin):
        tag = "  <- best on val" if i == best_i else ""
        dom = f" dominated by {', '.join(f['dominated_by_uniform'])}" if f["dominated_by_uniform"] else ""
        print(f"    predicted {_pct(f['predicted_acc'])}  val {_pct(f['val_acc'])}  BitOps {f['bitops']:.4g}  "
              f"{f['summary']}{dom}{tag}")
    print(f"  searched best: test {_pct(ours['test_acc'])} vs uniform {main_lab} "
          f"{_pct(uniform[main_lab]['test_acc'])} "
          f"({_pts(ours['test_acc'] - uniform[main_lab]['test_acc'])}); best uniform form by val "
          f"{best_uni_val}: {_pct(uniform[best_uni_val]['test_acc'])}")

    # random search, same number of real measurements
    t0 = time.perf_counter()
    rnd_cfgs = _random_configs(space, ctx, budget, n_random, np.random.default_rng([seed, 1009, bits]))
    rnd_val = cache(rnd_cfgs)
    r_i = _pick(rnd_cfgs, rnd_val, ctx)
    rnd = _point(rnd_cfgs[r_i], ctx, float(rnd_val[r_i]), test(rnd_cfgs[r_i]))
    rnd_s = time.perf_counter() - t0
    print(f"  random search: {len(rnd_cfgs)} configs within the budget measured on val ({rnd_s:.0f}s); best val "
          f"{_pct(rnd['val_acc'])}, test {_pct(rnd['test_acc'])} ({rnd['summary']})")

    main_test = uniform[main_lab]["test_acc"]
    return {
        "budget_bitops": limit, "search_seconds": round(search_s, 2), "predictor_evaluations": n_eval,
        "finalists_measure_seconds": round(fin_measure_s, 1),
        "searched": {**ours, "picked_from": "finalists, by val"}, "finalists": fin,
        "uniform": uniform, "uniform_main_form": main_lab,
        "uniform_best_form_by_val": best_uni_val, "uniform_best_form_by_test": best_uni_test,
        "margin_vs_uniform_main_pts": 100 * (ours["test_acc"] - main_test),
        "margin_vs_best_uniform_by_val_pts": 100 * (ours["test_acc"] - uniform[best_uni_val]["test_acc"]),
        "margin_vs_best_uniform_by_test_pts": 100 * (ours["test_acc"] - uniform[best_uni_test]["test_acc"]),
        "finalists_dominated_by_uniform": sum(bool(f["dominated_by_uniform"]) for f in fin),
        "random": {**rnd, "measurements": len(rnd_cfgs), "measurements_wanted": n_random,
                   "seconds": round(rnd_s, 1)},
        "margin_vs_random_pts": 100 * (ours["test_acc"] - rnd["test_acc"]),
        "measurements_ours": {"sampled_subnets": mode.subnets, "finalists": len(fin)},
    }


def _modelopt_config(layers: dict[str, dict[str, Any]], space: SearchSpace) -> SubnetConfig | None:
    """ModelOpt's per-layer W8A8 / W4A4 pick as our config (per-channel sym weights, affine activations)."""
    if set(layers) != set(space.layer_names) or any(v["weight_bits"] not in (4, 8) for v in layers.values()):
        return None
    cfg = SubnetConfig(tuple((n, LayerConfig(QuantForm(layers[n]["weight_bits"], "per_channel", True),
                                             QuantForm(layers[n]["act_bits"], "per_tensor", False)))
                             for n in space.layer_names))
    return cfg if space.contains(cfg) else None


def _modelopt_section(fp32: Path, data: PreparedData, ctx: MeasureContext, predictor: Any, cache: MeasuredCache,
                      test: TestCache, mode: Mode, seed: int) -> dict[str, Any]:
    """ModelOpt auto_quantize at each effective-bits level beside our search at the same weight budget."""
    space48 = SearchSpace.for_model(ctx.model, PROFILE_48)
    total = sum(lc.params for lc in ctx.costs)
    out: dict[str, Any] = {
        "space": {"profile": PROFILE_48.name, "description": PROFILE_48.description, "weight_bits": [4, 8],
                  "act_bits": [4, 8], "pinned": dict(space48.pinned), "total_weights": total},
        "note": ("equal cost = ModelOpt's budget: effective weight bits = weight-count-weighted mean weight bits over "
                 "every conv/linear layer (first/last counted at 8); ours: weight bytes <= bits / 8 x total weights. "
                 "Our {4,8} space lets a layer take W4A8 or W8A4, which ModelOpt's W8A8 / W4A4 formats do not; under "
                 "a weight-only budget activation bits are free, so 'ours_bitops_capped' also caps BitOps at those "
                 "of ModelOpt's pick. ModelOpt quantizes the FP32 model post-training (max calibration, signed 8-bit "
                 "/ unsigned 4-bit activations); ours are supernet subnets (LSQ scales, BN recalibrated)."),
        "levels": {},
    }
    try:
        from peer_modelopt import auto_quantize_peer, modelopt_version

        out["modelopt_version"] = modelopt_version()
        available = True
    except ImportError as exc:
        out["modelopt_error"] = str(exc).splitlines()[0]
        available = False
        print(f"\nModelOpt not importable ({out['modelopt_error']}): our side only")
    for bits in MODELOPT_BITS:
        level: dict[str, Any] = {"weight_bytes_budget": bits / 8 * total}
        print(f"\n== effective weight bits {bits}: weight bytes <= {bits / 8 * total:.0f}")
        mo_cfg = None
        if available:
            try:
                peer = auto_quantize_peer(fp32, data, bits, seed=seed)
            except Exception as exc:  # a peer failure is recorded, ours still runs
                level["modelopt_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                print(f"  ModelOpt failed: {level['modelopt_error']}")
            else:
                mo_cfg = _modelopt_config(peer["layers"], space48)
                level["modelopt"] = {k: peer[k] for k in ("test_acc", "fp32_test_acc", "effective_bits_requested",
                                                          "effective_bits_achieved", "satisfied", "seconds",
                                                          "calib_images", "score_images")}
                level["modelopt"]["layers"] = {n: v["format"] + ("u" if v["act_unsigned"] else "")
                                               for n, v in peer["layers"].items()}
                print(f"  ModelOpt auto_quantize: test {_pct(peer['test_acc'])} at effective bits "
                      f"{peer['effective_bits_achieved']:.3f} ({peer['seconds']:.0f}s); formats "
                      f"{dict(Counter(v['format'] for v in peer['layers'].values()))}")
                if mo_cfg is not None:
                    v = float(cache([mo_cfg])[0])
                    level["modelopt_allocation_on_supernet"] = _point(mo_cfg, ctx, v, test(mo_cfg))
                    print(f"  ModelOpt's allocation on our supernet: val {_pct(v)}, test "
                          f"{_pct(level['modelopt_allocation_on_supernet']['test_acc'])}, BitOps "
                          f"{level['modelopt_allocation_on_supernet']['bitops']:.4g}")
        variants = [("ours", SearchBudget(weight_bytes=bits / 8 * total))]
        if mo_cfg is not None:
            mo_bitops = subnet_cost(ctx.costs, mo_cfg).bitops
            variants.append(("ours_bitops_capped", SearchBudget(weight_bytes=bits / 8 * total, bitops=mo_bitops)))
        for name, budget in variants:
            finalists, search_s, n_eval = _search(space48, ctx, predictor, budget, mode, seed)
            val = cache([p.config for p in finalists])
            i = _pick([p.config for p in finalists], val, ctx)
            best = _point(finalists[i].config, ctx, float(val[i]), test(finalists[i].config), finalists[i].accuracy)
            level[name] = {**best, "search_seconds": round(search_s, 2), "predictor_evaluations": n_eval,
                           "finalists_val_acc": [float(v) for v in val], "budget": budget.model_dump()}
            print(f"  {name}: test {_pct(best['test_acc'])} (val {_pct(best['val_acc'])}) at effective weight bits "
                  f"{best['effective_weight_bits']:.3f}, BitOps {best['bitops']:.4g}; {best['summary']}")
        if "modelopt" in level:
            level["margin_vs_modelopt_pts"] = 100 * (level["ours"]["test_acc"] - level["modelopt"]["test_acc"])
            if "ours_bitops_capped" in level:
                level["margin_bitops_capped_vs_modelopt_pts"] = 100 * (
                    level["ours_bitops_capped"]["test_acc"] - level["modelopt"]["test_acc"])
        out["levels"][str(bits)] = level
    return out


def _throughput(spec: JobSpec, ctx: MeasureContext, mode: Mode, seed: int,
                exclude: Sequence[SubnetConfig]) -> dict[str, Any]:
    """The same subnets measured as Ray Tune trials with 1 and 2 workers (chunks of `throughput_chunk`)."""
    import ray
    from quantsearch.distributed.ray_env import init_ray
    from quantsearch.distributed.tune_sample import tune_chunks

    configs = sample_configs(ctx.space, mode.throughput_subnets, seed + 1, "all", exclude=exclude)
    chunks = chunks_of(configs, mode.throughput_chunk)
    storage = mode.out / "tune-throughput"
    shutil.rmtree(storage, ignore_errors=True)
    storage.mkdir(parents=True)
    t0 = time.perf_counter()
    init_ray(None)
    ray_start = time.perf_counter() - t0
    out: dict[str, Any] = {"subnets": len(configs), "chunk": mode.throughput_chunk, "chunks": len(chunks),
                           "ray_start_seconds": round(ray_start, 1), "ray_version": ray.__version__,
                           "ray_cpus": ray.cluster_resources().get("CPU"), "cores": os.cpu_count(),
                           "workers": {}}
    vals: dict[int, dict[str, float]] = {}
    print(f"\n== throughput: {len(configs)} subnets in {len(chunks)} Tune trials (Ray started in {ray_start:.0f}s)")
    for w in (1, 2):
        t0 = time.perf_counter()
        rows = [r for rs in tune_chunks(context_args(spec), w, storage, f"throughput-w{w}")(chunks) for r in rs]
        dt = time.perf_counter() - t0
        vals[w] = {r["config"]: float(r["val_acc"]) for r in rows}
        out["workers"][str(w)] = {"seconds": round(dt, 1), "subnets_per_s": len(rows) / dt}
        print(f"  {w} worker(s): {len(rows)} subnets in {dt:.0f}s = {len(rows) / dt:.3f} subnets/s")
    ray.shutdown()
    out["speedup_2_vs_1"] = out["workers"]["2"]["subnets_per_s"] / out["workers"]["1"]["subnets_per_s"]
    out["max_val_diff_1_vs_2"] = max(abs(vals[1][k] - vals[2][k]) for k in vals[1])
    out["note"] = (f"this machine has {os.cpu_count()} CPU cores (Ray sees {out['ray_cpus']}), shared with other "
                   "work while measured; each trial uses one torch thread, loads the supernet and the data once, "
                   "and the times include Tune's trial start-up")
    print(f"  speedup 2 vs 1 workers: {out['speedup_2_vs_1']:.2f}x")
    return out


# ---------------------------------------------------------------- main

def main() -> None:
    """Sample, fit, search, compare; print every figure and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="own small supernet, 120 subnets, 32 x 10 search")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=0, help="measure on val as this many Ray Tune trials at a time "
                                                           "(sampling, finalists, baselines, random search; default "
                                                           "0: in-process); test is always measured in-process")
    ap.add_argument("--random-measurements", type=int, default=None,
                    help="random-search measurements per budget (default: sampled subnets + finalists, as ours)")
    ap.add_argument("--no-modelopt", action="store_true", help="skip the ModelOpt comparison")
    ap.add_argument("--no-throughput", action="store_true", help="skip the Ray Tune throughput measurement")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    t_start = time.perf_counter()
    mode = QUICK if args.quick else FULL
    seed = args.seed
    mode.out.mkdir(parents=True, exist_ok=True)
    fp32 = RUNS / "fp32-resnet8" / "model.pt"
    if not fp32.exists():
        sys.exit(f"{fp32} is missing: run benchmarks/fp32_baseline.py first")
    data = prepare_data(DataSpec(name="fashion-mnist"))
    ckpt, sn_info = _supernet(mode, data, seed, fp32)
    spec = JobSpec.model_validate({
        "name": f"cqap-{mode.name}", "seed": seed, "output_dir": str(mode.out), "device": "cpu",
        "model": {"name": "resnet8"}, "data": {"name": "fashion-mnist"},
        "sample": {"subnets": mode.subnets, "chunk": mode.chunk, "bn_images": mode.bn_images,
                   "val_images": mode.val_images, "forms": "all", "seed": seed, "checkpoint": str(ckpt)}})
    _check_cache(mode.out, {"checkpoint_sha256": sn_info["sha256"], "bn_images": mode.bn_images,
                            "val_images": mode.val_images, "seed": seed, "data": spec.data.model_dump()})
    ctx = load_context(ckpt, data, mode.bn_images, mode.val_images, seed)
    space = ctx.space
    settings = {"mode": mode.name, "seed": seed, "bn_images": mode.bn_images,
                "val_images": min(mode.val_images or len(data.val), len(data.val)),
                "val_split": len(data.val), "test_images": len(data.test), "forms": "all",
                "form_labels": [f.label() for f in net_forms(space)], "main_form": MAIN_FORM.label(),
                "profile": space.profile.name, "pinned": dict(space.pinned), "subnets": mode.subnets,
                "holdout": mode.holdout, "population": mode.population, "generations": mode.generations,
                "finalists": mode.finalists, "chunk": mode.chunk, "sample_workers": args.workers,
                "measured_table": str((mode.out / "sample" / "measured.parquet").relative_to(ROOT))}
    print(f"mode {mode.name}: {mode.subnets} subnets, search {mode.population} x {mode.generations}, "
          f"{mode.finalists} finalists, bn_images {mode.bn_images}, val images {settings['val_images']}, seed {seed}")

    t0 = time.perf_counter()
    rows, sample_facts = _sample(spec, data, mode, seed, args.workers, space)
    sample_wall = time.perf_counter() - t0
    predictor, pred = _predictors(rows, space, mode, seed)

    run_chunks = None
    if args.workers:
        from quantsearch.distributed.tune_sample import tune_chunks

        run_chunks = tune_chunks(context_args(spec), args.workers, mode.out / "tune", "measure")
    cache = MeasuredCache(ctx, mode.out / "sample" / "measured.parquet", mode.chunk, run_chunks)
    test = TestCache(ctx, data, mode.out / "test_acc.json")
    n_random = args.random_measurements or (len(rows) + mode.finalists)
    budgets = {f"W{b}A{b}": _budget_section(b, space, ctx, predictor, cache, test, mode, seed, n_random)
               for b in BUDGETS}

    if args.no_modelopt:
        modelopt: dict[str, Any] = {"skipped": "--no-modelopt"}
    else:
        # ModelOpt runs in this process: one subnet measured before and after shows it left our measuring alone
        probe = SubnetConfig.from_json(rows[0]["config"])
        before = ctx.measure([probe])[0]["val_acc"]
        modelopt = _modelopt_section(fp32, data, ctx, predictor, cache, test, mode, seed)
        after = ctx.measure([probe])[0]["val_acc"]
        modelopt["same_measurement_before_and_after"] = bool(abs(after - before) < EPS)
        print(f"  one sampled subnet measured before / after ModelOpt: {_pct(before)} / {_pct(after)}")
    throughput = {"skipped": "--no-throughput"} if args.no_throughput else _throughput(
        spec, ctx, mode, seed, [SubnetConfig.from_json(r["config"]) for r in rows])

    best = pred["models"][pred["best"]]
    targets: dict[str, Any] = {
        "heldout_subnets>=200": best["n_heldout"] >= 200,
        "best_predictor_tau>=0.8": best["tau"] >= 0.8,
        "best_predictor_band_tau>avg_bits_proxy": best["band_tau"] > best["proxy_avg_bits"]["band_tau"],
        "best_predictor_band_tau>bitops_proxy": best["band_tau"] > (best["proxy_bitops"]["band_tau"]
                                                                     if best["proxy_bitops"]["band_tau"] is not None
                                                                     and math.isfinite(best["proxy_bitops"]["band_tau"])
                                                                     else -1),
    }
    for b in BUDGETS:
        lab, sec = f"W{b}A{b}", budgets[f"W{b}A{b}"]
        ours, main = sec["searched"]["test_acc"], sec["uniform"][sec["uniform_main_form"]]["test_acc"]
        targets[f"{lab}_searched>=uniform{'+' + str(100 * MARGIN[b]) + 'pts' if MARGIN[b] else ''}"] = (
            ours >= main + MARGIN[b] - EPS)
        targets[f"{lab}_searched>=random"] = ours >= sec["random"]["test_acc"] - EPS
        targets[f"{lab}_finalists_not_dominated_by_uniform"] = sec["finalists_dominated_by_uniform"] == 0
    for bits, level in modelopt.get("levels", {}).items():
        if "modelopt" in level:
            targets[f"eff{bits}_ours>=modelopt"] = level["ours"]["test_acc"] >= level["modelopt"]["test_acc"] - EPS
    if "speedup_2_vs_1" in throughput:
        targets["tune_2_workers_speedup>=1.6"] = throughput["speedup_2_vs_1"] >= 1.6
    wall = time.perf_counter() - t_start
    print("\ntargets:", json.dumps(targets, indent=1))
    print(f"wall time {wall:.0f}s")

    notes = [
        "Every selection (best predictor, best finalist, best random config, best uniform form) uses val; test is "
        "measured once per reported config and never fits or selects anything.",
        "At the BitOps of uniform W2A2 every free layer must be at 2 bits (2 is the lowest bit-width; first/last are "
        "pinned at 8 in every config), so the only configs within that budget are W2A2 in the network-wide forms: "
        "there the search and random search can only choose a form. All those configs have the same BitOps, so "
        "the predicted front holds one config and one finalist is measured, while random search measures all of "
        "them and keeps the best on val.",
        "Finalists are SearchResult.finalists(k) as in the search job: the k front members with the best predicted "
        "accuracy (next to the budget), the best predicted among them.",
        "Random search draws the search's own random genomes (every form; bits capped at a random level, so low bits "
        "are likelier) and rejects those over budget; it gets as many real measurements as ours used "
        "(sampled subnets + finalists), fewer when the budget holds fewer configs.",
        "The best predictor is picked by held-out tau between the two fitted on the same split; its reported tau is "
        "on those same held-out subnets.",
    ]
    if mode.name == "quick":
        notes.append("quick mode: a 1-epoch supernet on 4,000 images, 120 subnets (30 held out: the >=200 target is "
                     "for full mode), 2,000 val images; its figures show the pipeline works, not the method's quality.")
    search_wall = {"sampling": round(sample_wall, 1), "predictor_fits": pred["seconds"],
                   **{f"nsga_{k}": v["search_seconds"] for k, v in budgets.items()},
                   **{f"finalists_val_{k}": v["finalists_measure_seconds"] for k, v in budgets.items()}}
    search_wall["total_per_budget_incl_shared_sampling"] = {
        k: round(sample_wall + pred["seconds"] + v["search_seconds"] + v["finalists_measure_seconds"], 1)
        for k, v in budgets.items()}
    print(f"search wall time (sampling + predictor fits + NSGA-II + finalists on val): "
          f"{search_wall['total_per_budget_incl_shared_sampling']}")
    payload = {
        "mode": mode.name, "seed": seed, "settings": settings, "supernet": sn_info,
        "sample": {**sample_facts, "wall_seconds": round(sample_wall, 1)},
        "predictors": pred, "search_wall_seconds": search_wall, "budgets": budgets, "modelopt": modelopt,
        "throughput": throughput,
        "measurements": {"val_new_after_sampling": cache.measured, "test_new": test.measured,
                         "random_per_budget": n_random},
        "wall_seconds": round(wall, 1), "targets": targets, "notes": notes,
    }
    write_result("cqap_search_quick" if args.quick else "cqap_search", _clean(payload))


if __name__ == "__main__":
    main()
