"""A DQSS job: FP32 checkpoint + bits (uniform or a SubnetConfig) -> strategy.json, evaluated."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantsearch._util import atomic_write_json, seed_everything
from quantsearch.config import DQSSSpec, QATSpec
from quantsearch.data import ArrayData, PreparedData, batches, take
from quantsearch.device import resolve_device
from quantsearch.dqss.qat import finetune_fixed, search_qat, steps_for
from quantsearch.dqss.search import (
    STRATEGIES,
    Mixer,
    apply_strategy,
    attach_mixers,
    candidate_scales,
    choose,
    detach_mixers,
    read_scales,
    share_input_quantizers,
    shared_input_groups,
    train_mixers_ptq,
)
from quantsearch.errors import ConfigError
from quantsearch.quant.convert import quant_layers
from quantsearch.space import SubnetConfig, set_config
from quantsearch.train.checkpoint import load_checkpoint, model_meta, save_checkpoint
from quantsearch.train.fit import build_model_from_checkpoint
from quantsearch.train.loop import evaluate
from quantsearch.train.progress import epoch_progress
from quantsearch.train.qat import load_model, quantized_model, resolve_config

STRATEGY_FORMAT = "quantsearch-dqss-strategy/1"


@dataclass(frozen=True)
class DQSSResult:
    """The strategy file and the accuracy of the model built from it."""

    strategy_path: Path
    val_acc: float
    test_acc: float
    choices: dict[str, tuple[str, str]]
    search_seconds: float
    finetune_seconds: float = 0.0


@dataclass(frozen=True)
class QATSchedule:
    """DQSS-QAT: search (joint) phase then fine-tuning of the argmax strategy, in epochs (fractions allowed)."""

    search_epochs: float = 1.0
    finetune_epochs: float = 1.0
    lr: float = 1e-3
    scale_lr: float = 1e-3
    arch_lr: float = 0.01
    kd_weight: float = 1.0
    batch_size: int = 128


@dataclass
class _Setup:
    fp32: dict[str, Any]
    teacher: nn.Module
    example: torch.Tensor
    model: nn.Module
    cfg: SubnetConfig
    calib: ArrayData
    mixers: dict[str, Mixer]


def _setup(fp32_path: str | Path, data: PreparedData, qat: QATSpec, seed: int, calib: ArrayData | None,
           easyquant_steps: int, temperature: float, tie: bool, device: str | torch.device = "cpu") -> _Setup:
    """FP32 teacher, converted model at the requested bits, every strategy's candidates, mixers attached."""
    device = resolve_device(device)
    fp32 = load_checkpoint(fp32_path, kind="fp32")
    teacher = build_model_from_checkpoint(fp32).to(device)
    example = data.example(seed).to(device)
    model = quantized_model(fp32, example, device)
    cfg = resolve_config(qat, model)
    set_config(model, cfg)
    calib = calib if calib is not None else take(data.train, qat.calib_images, seed + 1)
    inputs = [x for x, _ in batches(calib, 256, data.mean, data.std)]
    cands = candidate_scales(model, inputs, easyquant_steps=easyquant_steps)
    groups = shared_input_groups(model, example) if tie else None
    mixers = attach_mixers(model, cands, temperature, groups)
    return _Setup(fp32, teacher, example, model, cfg, calib, mixers)


def _finish(st: _Setup, data: PreparedData, qat: QATSpec, out_dir: str | Path, fp32_path: str | Path,
            mode: str, search: dict[str, Any], layers: dict[str, dict[str, Any]], losses: list[float],
            seed: int, search_seconds: float, finetune_seconds: float = 0.0) -> DQSSResult:
    """Evaluate the fixed strategy, then write strategy.json, model.pt and metrics.json."""
    model = st.model
    val = evaluate(model, data.val, data.mean, data.std).top1 if len(data.val) else float("nan")
    test = evaluate(model, data.test, data.mean, data.std).top1
    out_dir = Path(out_dir)
    # PTQ keeps the FP32 weights, so the FP32 checkpoint + this file rebuild the model; QAT needs its own
    weights = str(Path(fp32_path).resolve()) if mode == "ptq" else "model.pt"
    strategy = {"format": STRATEGY_FORMAT, "mode": mode, "config": st.cfg.to_dict(), "candidates": list(STRATEGIES),
                "weights": weights, "input_shape": list(st.example.shape[1:]), "search": search, "layers": layers}
    path = out_dir / "strategy.json"
    save_checkpoint(out_dir / "model.pt", {
        "kind": "dqss", **model_meta(st.fp32, st.example), "state_dict": copy.deepcopy(model.state_dict()),
        "config": st.cfg.to_json(), "seed": seed, "mode": mode})
    atomic_write_json(out_dir / "metrics.json", {
        "mode": mode, "val_acc": val, "test_acc": test, "config": qat.config, "search_seconds": search_seconds,
        "finetune_seconds": finetune_seconds, "losses": losses[:: max(1, len(losses) // 50)]})
    atomic_write_json(path, strategy)
    return DQSSResult(path, val, test, {n: (v["activation"], v["weight"]) for n, v in layers.items()},
                      search_seconds, finetune_seconds)


def run_dqss_ptq(fp32_path: str | Path, data: PreparedData, qat: QATSpec, out_dir: str | Path, iters: int = 300,
                 lr: float = 0.05, batch_size: int = 128, temperature: float = 1.0, seed: int = 0,
                 calib: ArrayData | None = None, easyquant_steps: int = 100, tie: bool = True,
                 scale_lr: float = 0.0, device: str | torch.device = "cpu") -> DQSSResult:
    """PTQ DQSS: candidates from every strategy, alpha/beta (and with scale_lr > 0 the candidate scales) trained
    on calibration images against the FP32 logits, argmax -> strategy."""
    st = _setup(fp32_path, data, qat, seed, calib, easyquant_steps, temperature, tie, device)
    log = train_mixers_ptq(st.model, st.teacher, st.mixers, st.calib, data.mean, data.std, iters, lr, batch_size,
                           seed, scale_lr=scale_lr)
    layers = choose(st.mixers)
    detach_mixers(st.model)
    apply_strategy(st.model, layers)
    search = {"iters": iters, "lr": lr, "scale_lr": scale_lr, "batch_size": batch_size, "temperature": temperature,
              "loss": "KL(fp32 || quantized) logits", "calib_images": len(st.calib), "seed": seed,
              "easyquant_steps": easyquant_steps, "tied_inputs": tie,
              "final_loss": log.losses[-1] if log.losses else None, "seconds": log.seconds}
    return _finish(st, data, qat, out_dir, fp32_path, "ptq", search, layers, log.losses, seed, log.seconds)


def run_dqss_qat(fp32_path: str | Path, data: PreparedData, qat: QATSpec, out_dir: str | Path,
                 schedule: QATSchedule | None = None, temperature: float = 1.0, seed: int = 0,
                 easyquant_steps: int = 100, tie: bool = True, progress: bool = False,
                 device: str | torch.device = "cpu") -> DQSSResult:
    """QAT DQSS: weights + candidate scales + alpha/beta in one pass, argmax, then LSQ fine-tuning of it."""
    sch = schedule or QATSchedule()
    gen = seed_everything(seed)
    st = _setup(fp32_path, data, qat, seed, None, easyquant_steps, temperature, tie, device)
    n_search = steps_for(sch.search_epochs, len(data.train), sch.batch_size)
    with epoch_progress(f"dqss-qat search {qat.config}", n_search, progress) as tick:
        slog = search_qat(st.model, st.teacher, st.mixers, data.train, data.mean, data.std, n_search, sch.lr,
                          sch.scale_lr, sch.arch_lr, sch.batch_size, gen, sch.kd_weight, on_step=tick)
    layers = choose(st.mixers)
    detach_mixers(st.model)
    apply_strategy(st.model, layers)
    share_input_quantizers(st.model, layers)
    n_ft = steps_for(sch.finetune_epochs, len(data.train), sch.batch_size) if sch.finetune_epochs > 0 else 0
    ft_losses: list[float] = []
    ft_seconds = 0.0
    if n_ft:
        with epoch_progress(f"dqss-qat fine-tune {qat.config}", n_ft, progress) as tick:
            flog = finetune_fixed(st.model, st.teacher, data.train, data.mean, data.std, n_ft, sch.lr, sch.scale_lr,
                                  sch.batch_size, gen, sch.kd_weight, on_step=tick)
        ft_losses, ft_seconds = flog.losses, flog.seconds
    st.model.eval()
    for layer in quant_layers(st.model).values():  # the strategy deploys integer zero points: evaluate those
        cfg = layer.layer_config()
        layer.aq.round_offsets(cfg.activation)
        layer.wq.round_offsets(cfg.weight)
    read_scales(st.model, layers)
    search = {"search_steps": n_search, "finetune_steps": n_ft, **asdict(sch), "temperature": temperature,
              "loss": "CE + kd_weight * KL(fp32 || quantized) logits", "calib_images": len(st.calib), "seed": seed,
              "easyquant_steps": easyquant_steps, "tied_inputs": tie, "seconds": slog.seconds,
              "finetune_seconds": ft_seconds, "scales": "learned (LSQ) in search and fine-tuning; final values"}
    return _finish(st, data, qat, out_dir, fp32_path, "qat", search, layers, slog.losses + ft_losses, seed,
                   slog.seconds, ft_seconds)


def run_dqss(spec: DQSSSpec, fp32_path: str | Path, data: PreparedData, out_dir: str | Path, seed: int = 0,
             progress: bool = False, device: str | torch.device = "cpu") -> DQSSResult:
    """One DQSS search as a job spec's `dqss` section (or the CLI) describes it, PTQ or QAT."""
    if spec.mode == "qat":
        sch = QATSchedule(search_epochs=spec.search_epochs, finetune_epochs=spec.finetune_epochs, lr=spec.weight_lr,
                          scale_lr=spec.scales_lr(), arch_lr=spec.arch_lr(), kd_weight=spec.kd_weight,
                          batch_size=spec.batch_size)
        return run_dqss_qat(fp32_path, data, spec.qat_spec(), out_dir, sch, spec.temperature, seed,
                            spec.easyquant_steps, spec.tie, progress, device)
    return run_dqss_ptq(fp32_path, data, spec.qat_spec(), out_dir, spec.iters, spec.arch_lr(), spec.batch_size,
                        spec.temperature, seed, None, spec.easyquant_steps, spec.tie, spec.scales_lr(), device)


def load_strategy(path: str | Path) -> dict[str, Any]:
    """Read a strategy file (checks its format tag)."""
    try:
        st = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read strategy file {path} ({exc})") from exc
    if not isinstance(st, dict) or st.get("format") != STRATEGY_FORMAT:
        raise ConfigError(f"{path} is not a DQSS strategy file ({STRATEGY_FORMAT}); pass the strategy.json "
                          "that `quantsearch dqss` wrote")
    return st


def strategy_weights(path: str | Path, st: dict[str, Any]) -> Path:
    """The checkpoint a strategy's weights come from (relative paths are beside the strategy file)."""
    w = Path(st["weights"])
    return w if w.is_absolute() else Path(path).parent / w


def build_from_strategy(path: str | Path, weights: str | Path | None = None) -> nn.Module:
    """The quantized model a strategy file describes: its weights (FP32 for PTQ, model.pt for QAT), its config,
    each layer's chosen scales."""
    st = load_strategy(path)
    src = Path(weights) if weights is not None else strategy_weights(path, st)
    ckpt = load_checkpoint(src)
    if ckpt["kind"] == "fp32":
        model = quantized_model(ckpt, torch.zeros((2, *st["input_shape"])))
    elif ckpt["kind"] == "dqss":
        model = load_model(ckpt)
    else:
        raise ConfigError(f"{src} is a '{ckpt['kind']}' checkpoint; a strategy needs its FP32 checkpoint "
                          "(PTQ) or the model.pt DQSS wrote beside it (QAT)")
    set_config(model, SubnetConfig.from_dict(st["config"]))
    missing = set(quant_layers(model)) - set(st["layers"])
    if missing:
        raise ConfigError(f"{path} does not match {src}: no strategy for layers {sorted(missing)[:3]}")
    apply_strategy(model, st["layers"])
    return model
