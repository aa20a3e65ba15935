"""DQSS over K disjoint calibration subsets as K parallel Ray Tune trials; agreement and a combined strategy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from quantsearch.allocator import tune_host_allocator
from quantsearch.config import DataSpec, DQSSSpec
from quantsearch.dqss.combine import SubsetsResult
from quantsearch.errors import QuantsearchError


def _trial(config: dict[str, Any]) -> None:
    import ray.tune
    import torch

    from quantsearch.data import calibration_subsets, prepare_data
    from quantsearch.dqss import run_dqss

    tune_host_allocator()  # a worker process of its own: the CLI's setting does not reach it
    torch.set_num_threads(1)
    data = prepare_data(DataSpec.model_validate(config["data"]))
    k, idx = config["k"], config["index"]
    subset = calibration_subsets(data.train, k, config["n"], config["seed"])[idx]
    out = Path(config["out"]) / f"subset{idx}"
    spec = DQSSSpec.model_validate(config["dqss"])
    res = run_dqss(spec, config["fp32"], data, out, seed=config["seed"] + idx, device=config.get("device", "cpu"),
                   calib=subset)
    ray.tune.report({"val_acc": res.val_acc, "test_acc": res.test_acc, "index": idx,
                     "strategy": str(res.strategy_path), "search_seconds": res.search_seconds})


def dqss_over_subsets(fp32_path: str | Path, data_spec: DataSpec, dqss: DQSSSpec, out_dir: str | Path, seed: int = 0,
                      address: str | None = None, concurrent: int | None = None,
                      device: str | torch.device = "cpu") -> SubsetsResult:
    """Run K = dqss.subsets PTQ trials in parallel (one CPU each; on CUDA the K trials share the GPUs), then vote
    and measure the combined strategy."""
    from ray import tune

    from quantsearch._util import atomic_write_json
    from quantsearch.data import ArrayBatches, calibration_subsets, prepare_data
    from quantsearch.device import resolve_device
    from quantsearch.distributed.ray_env import init_ray
    from quantsearch.dqss import Strategy, shared_input_groups
    from quantsearch.dqss.combine import agreement, combined_choice, heatmap
    from quantsearch.quant import calibrate_active
    from quantsearch.space import quantized_model, resolve_config, set_config
    from quantsearch.train.checkpoint import load_checkpoint
    from quantsearch.train.loop import evaluate, val_top1

    dev = resolve_device(device)
    k, target = dqss.subsets, dqss.target
    if k < 1:
        raise QuantsearchError("dqss.subsets must be >= 1 to search over calibration subsets")
    out_dir = Path(out_dir).resolve()
    data = prepare_data(data_spec)
    calibration_subsets(data.train, k, target.calib_images, seed)  # fails early, in one line, if they do not fit
    init_ray(address)
    space = {"index": tune.grid_search(list(range(k))), "k": k, "n": target.calib_images, "seed": seed,
             "data": data_spec.model_dump(), "fp32": str(Path(fp32_path).resolve()),
             "out": str(out_dir), "dqss": dqss.model_dump(), "device": "cuda" if dev.type == "cuda" else "cpu"}
    resources: dict[str, float] = {"cpu": 1, "gpu": 1.0 / k} if dev.type == "cuda" else {"cpu": 1}
    tuner = tune.Tuner(tune.with_resources(_trial, resources), param_space=space,
                       tune_config=tune.TuneConfig(max_concurrent_trials=concurrent or k),
                       run_config=tune.RunConfig(name=f"dqss-subsets-{out_dir.name}",
                                                 storage_path=str(out_dir / "ray")))
    grid = tuner.fit()
    if grid.errors:
        raise QuantsearchError(f"{len(grid.errors)} DQSS trial(s) failed: {str(grid.errors[0]).splitlines()[0]}")
    trials = sorted((dict(grid[i].metrics or {}) for i in range(len(grid))), key=lambda m: m["index"])
    strategies = [Strategy.load(t["strategy"]) for t in trials]
    agree = agreement(strategies)
    combined = combined_choice(strategies)
    fp32 = load_checkpoint(fp32_path, kind="fp32")
    model = quantized_model(fp32, data.example(seed), dev)
    set_config(model, resolve_config(target, model))
    calib = calibration_subsets(data.train, k, target.calib_images, seed)[0]
    # one scale per shared input tensor: a block's conv and its shortcut read one tensor (the alpha group)
    groups = shared_input_groups(model, data.example(seed)) if dqss.tie else None
    calibrate_active(model, ArrayBatches(calib, 256, data.mean, data.std), combined,
                     easyquant_steps=dqss.easyquant_steps, groups=groups)
    val = val_top1(model, data)
    test = evaluate(model, data.test, data.mean, data.std).top1
    png = heatmap(strategies, out_dir / "strategy_heatmap.png")
    summary = out_dir / "subsets.json"
    atomic_write_json(summary, {
        "k": k, "calib_images": target.calib_images, "config": target.config,
        "trials": [{key: t[key] for key in ("index", "val_acc", "test_acc", "search_seconds", "strategy")}
                   for t in trials],
        "agreement": agree, "combined": {n: {"activation": a, "weight": w} for n, (a, w) in combined.items()},
        "combined_val_acc": val, "combined_test_acc": test, "combined_rule": "argmax of mean p / mean q, scales "
        "recalibrated on subset 0, once per shared input tensor"})
    return SubsetsResult(trials, agree, combined, val, test, png, summary)
