"""A DQSS job: FP32 checkpoint + a target (uniform bits or a SubnetConfig) -> strategy.json, evaluated.

The search itself is `dqss_search` (any model, any batches); this wrapper loads the checkpoint, builds the seeded
in-memory loaders, evaluates on val and test and writes strategy.json, model.pt and metrics.json."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from quantsearch._util import atomic_write_json, seed_everything
from quantsearch.config import DQSSSpec
from quantsearch.data import ArrayBatches, ImageSet, PreparedData, take
from quantsearch.device import resolve_device
from quantsearch.dqss.search import dqss_search
from quantsearch.dqss.strategy import Strategy
from quantsearch.errors import ConfigError
from quantsearch.space import load_model, quantized_model, resolve_config, set_config
from quantsearch.train.checkpoint import load_checkpoint, model_meta, save_checkpoint
from quantsearch.train.loop import evaluate, val_top1


@dataclass(frozen=True)
class DQSSResult:
    """The strategy (and its file) and the accuracy of the model built from it."""

    strategy_path: Path
    val_acc: float
    test_acc: float
    choices: dict[str, tuple[str, str]]
    search_seconds: float
    finetune_seconds: float = 0.0
    strategy: Strategy | None = None


def run_dqss(spec: DQSSSpec, fp32_path: str | Path, data: PreparedData, out_dir: str | Path, seed: int = 0,
             progress: bool = False, device: str | torch.device = "cpu", calib: ImageSet | None = None
             ) -> DQSSResult:
    """One DQSS search as a job spec's `dqss` section (or the CLI) describes it, PTQ or QAT.

    PTQ searches on `calib` (default: a seeded subset of `spec.target.calib_images` training images, in shuffled
    batches of `spec.batch_size`, seed `seed`); QAT on the whole train split (seeded by `seed`)."""
    dev = resolve_device(device)
    gen = seed_everything(seed) if spec.mode == "qat" else None
    fp32 = load_checkpoint(fp32_path, kind="fp32")
    example = data.example(seed).to(dev)
    model = quantized_model(fp32, example, dev)
    set_config(model, resolve_config(spec.target, model))
    calib = calib if calib is not None else take(data.train, spec.target.calib_images, seed + 1)
    if spec.mode == "ptq":
        batches = ArrayBatches(calib, spec.batch_size, data.mean, data.std, shuffle=True,
                               generator=torch.Generator().manual_seed(seed))
    else:
        batches = ArrayBatches(data.train, spec.batch_size, data.mean, data.std, shuffle=True, generator=gen)
    losses: list[float] = []
    strategy = dqss_search(model, batches, spec, calib_batches=ArrayBatches(calib, 256, data.mean, data.std),
                           example=example, progress=progress, on_step=lambda _step, loss: losses.append(loss))
    search = {**strategy.search, "batch_size": spec.batch_size, "seed": seed}
    # PTQ keeps the FP32 weights, so the FP32 checkpoint + this file rebuild the model; QAT needs its own
    weights = str(Path(fp32_path).resolve()) if spec.mode == "ptq" else "model.pt"
    strategy = replace(strategy, search=search, weights=weights, input_shape=tuple(example.shape[1:]))
    val = val_top1(model, data)
    test = evaluate(model, data.test, data.mean, data.std).top1
    out_dir = Path(out_dir)
    save_checkpoint(out_dir / "model.pt", {
        "kind": "dqss", **model_meta(fp32, example), "state_dict": copy.deepcopy(model.state_dict()),
        "config": strategy.config.to_json(), "seed": seed, "mode": spec.mode})
    search_seconds = float(search["seconds"])
    finetune_seconds = float(search.get("finetune_seconds", 0.0))
    atomic_write_json(out_dir / "metrics.json", {
        "mode": spec.mode, "val_acc": val, "test_acc": test, "config": spec.target.config,
        "search_seconds": search_seconds, "finetune_seconds": finetune_seconds,
        "losses": losses[:: max(1, len(losses) // 50)]})
    path = strategy.save(out_dir / "strategy.json")
    return DQSSResult(path, val, test, strategy.choices(), search_seconds, finetune_seconds, strategy)


def strategy_weights(path: str | Path, strategy: Strategy) -> Path:
    """The checkpoint a strategy file's weights come from (relative paths are beside the strategy file)."""
    if not strategy.weights:
        raise ConfigError(f"{path} names no weights; pass --checkpoint")
    w = Path(strategy.weights)
    return w if w.is_absolute() else Path(path).parent / w


def build_from_strategy(path: str | Path, weights: str | Path | None = None) -> nn.Module:
    """The quantized model a strategy file describes: its weights (FP32 for PTQ, model.pt for QAT), its config,
    each layer's chosen scales."""
    strategy = Strategy.load(path)
    src = Path(weights) if weights is not None else strategy_weights(path, strategy)
    ckpt = load_checkpoint(src)
    if ckpt["kind"] == "fp32":
        if strategy.input_shape is None:
            raise ConfigError(f"{path} has no input_shape; rebuild it with `quantsearch dqss`")
        model = quantized_model(ckpt, torch.zeros((2, *strategy.input_shape)))
    elif ckpt["kind"] == "dqss":
        model = load_model(ckpt)
    else:
        raise ConfigError(f"{src} is a '{ckpt['kind']}' checkpoint; a strategy needs its FP32 checkpoint "
                          "(PTQ) or the model.pt DQSS wrote beside it (QAT)")
    try:
        return strategy.apply(model)
    except ConfigError as exc:
        raise ConfigError(f"{path} does not match {src}: {exc}") from exc
