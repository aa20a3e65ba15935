"""A DQSS job: FP32 checkpoint + bits (uniform or a SubnetConfig) -> strategy.json, evaluated."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantsearch._util import atomic_write_json
from quantsearch.config import QATSpec
from quantsearch.data import PreparedData, batches, take
from quantsearch.dqss.search import (
    STRATEGIES,
    apply_strategy,
    attach_mixers,
    candidate_scales,
    choose,
    detach_mixers,
    train_mixers_ptq,
)
from quantsearch.space import set_config
from quantsearch.train.checkpoint import load_checkpoint, model_meta, save_checkpoint
from quantsearch.train.fit import build_model_from_checkpoint
from quantsearch.train.loop import evaluate
from quantsearch.train.qat import quantized_model, resolve_config

STRATEGY_FORMAT = "quantsearch-dqss-strategy/1"


@dataclass(frozen=True)
class DQSSResult:
    """The strategy file and the accuracy of the model built from it."""

    strategy_path: Path
    val_acc: float
    test_acc: float
    choices: dict[str, tuple[str, str]]
    search_seconds: float


def run_dqss_ptq(fp32_path: str | Path, data: PreparedData, qat: QATSpec, out_dir: str | Path, iters: int = 300,
                 lr: float = 0.05, batch_size: int = 128, temperature: float = 1.0, seed: int = 0,
                 calib: Any = None, easyquant_steps: int = 100) -> DQSSResult:
    """PTQ DQSS: candidates from every strategy, alpha/beta trained on calibration images, argmax -> strategy."""
    fp32 = load_checkpoint(fp32_path, kind="fp32")
    teacher = build_model_from_checkpoint(fp32)
    example = data.example(seed)
    model = quantized_model(fp32, example)
    cfg = resolve_config(qat, model)
    set_config(model, cfg)
    calib = calib if calib is not None else take(data.train, qat.calib_images, seed + 1)
    inputs = [x for x, _ in batches(calib, 256, data.mean, data.std)]
    cands = candidate_scales(model, inputs, easyquant_steps=easyquant_steps)
    mixers = attach_mixers(model, cands, temperature)
    log = train_mixers_ptq(model, teacher, mixers, calib, data.mean, data.std, iters, lr, batch_size, seed)
    layers = choose(mixers)
    detach_mixers(model)
    apply_strategy(model, layers)
    val = evaluate(model, data.val, data.mean, data.std).top1 if len(data.val) else float("nan")
    test = evaluate(model, data.test, data.mean, data.std).top1
    out_dir = Path(out_dir)
    strategy = {"format": STRATEGY_FORMAT, "mode": "ptq", "config": cfg.to_dict(), "candidates": list(STRATEGIES),
                "search": {"iters": iters, "lr": lr, "batch_size": batch_size, "temperature": temperature,
                           "loss": "KL(fp32 || quantized) logits", "calib_images": len(calib), "seed": seed,
                           "easyquant_steps": easyquant_steps,
                           "final_loss": log.losses[-1] if log.losses else None, "seconds": log.seconds},
                "layers": layers}
    path = out_dir / "strategy.json"
    atomic_write_json(path, strategy)
    save_checkpoint(out_dir / "model.pt", {
        "kind": "dqss", **model_meta(fp32, example), "state_dict": copy.deepcopy(model.state_dict()),
        "config": cfg.to_json(), "seed": seed})
    atomic_write_json(out_dir / "metrics.json", {
        "val_acc": val, "test_acc": test, "config": qat.config, "search_seconds": log.seconds,
        "losses": log.losses[:: max(1, iters // 50)]})
    return DQSSResult(path, val, test, {n: (v["activation"], v["weight"]) for n, v in layers.items()}, log.seconds)


def load_strategy(path: str | Path) -> dict[str, Any]:
    """Read a strategy file (checks its format tag)."""
    import json

    from quantsearch.errors import ConfigError

    try:
        st = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read strategy file {path} ({exc})") from exc
    if st.get("format") != STRATEGY_FORMAT:
        raise ConfigError(f"{path} is not a DQSS strategy file ({STRATEGY_FORMAT})")
    return st
