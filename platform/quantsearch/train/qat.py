"""Independent LSQ quantization-aware training of one fixed config, from an FP32 checkpoint.

This is the baseline the EQ-Net supernet is compared against: the same converted model, calibrated with
the MSE clip search, then weights, scales and offsets trained together at one fixed SubnetConfig.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantsearch._util import atomic_write_json, seed_everything
from quantsearch.config import JobSpec, QATSpec
from quantsearch.data import PreparedData, batches, take
from quantsearch.device import resolve_device
from quantsearch.errors import ConfigError
from quantsearch.quant import QuantPolicy, calibrate_model, convert, get_profile
from quantsearch.space import SearchSpace, SubnetConfig, parse_uniform, set_config
from quantsearch.train.checkpoint import load_checkpoint, model_meta, save_checkpoint
from quantsearch.train.fit import build_model_from_checkpoint
from quantsearch.train.loop import evaluate, train_epoch
from quantsearch.train.optim import make_scheduler
from quantsearch.train.progress import epoch_progress


@dataclass(frozen=True)
class QATResult:
    """Accuracy after calibration only (PTQ) and after QAT, on val and test."""

    config: SubnetConfig
    ptq_val_acc: float
    val_acc: float
    test_acc: float
    epochs: int
    seconds: float
    checkpoint: Path


def resolve_config(qat: QATSpec, model: nn.Module) -> SubnetConfig:
    """The SubnetConfig a QAT spec asks for, checked against its backend profile."""
    profile = get_profile(qat.profile)
    space = SearchSpace.for_model(model, profile)
    if Path(qat.config).suffix == ".json":
        cfg = SubnetConfig.load(qat.config)
    else:
        wf, af = parse_uniform(qat.config, qat.weight_granularity, qat.weight_symmetric, qat.act_symmetric)
        cfg = space.uniform(wf.bits, af.bits, wf.granularity, wf.symmetric, af.symmetric)
    if not space.contains(cfg):
        raise ConfigError(f"config '{qat.config}' is not deployable on profile '{profile.name}' for this model; "
                          "pick forms the profile lists (`quantsearch profiles list`)")
    return cfg


def quantized_model(fp32: dict[str, Any], example: torch.Tensor, device: str | torch.device = "cpu") -> nn.Module:
    """Convert an FP32 checkpoint's model on `device` (first/last pinned, found in execution order)."""
    return convert(build_model_from_checkpoint(fp32).to(device), QuantPolicy(), example.to(device))


def split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(network weights, quantizer scales/offsets)."""
    quant, weights = [], []
    for name, p in model.named_parameters():
        (quant if (".wq." in name or ".aq." in name) else weights).append(p)
    return weights, quant


def train_qat(spec: JobSpec, data: PreparedData, out_dir: str | Path, progress: bool = True) -> QATResult:
    """Calibrate, then LSQ-train the config of `spec.qat`; writes model.pt, config.json, metrics.json."""
    if spec.qat is None:
        raise ConfigError("the job has no 'qat' section; add one or pass --config")
    qat = spec.qat
    out_dir = Path(out_dir)
    ckpt_path = Path(qat.checkpoint or Path(spec.output_dir) / "fp32" / "model.pt")
    fp32 = load_checkpoint(ckpt_path, kind="fp32")
    gen = seed_everything(spec.seed)
    device = resolve_device(spec.device)
    example = data.example(spec.seed)
    model = quantized_model(fp32, example, device)
    cfg = resolve_config(qat, model)
    calib = take(data.train, qat.calib_images, spec.seed + 1)
    calibrate_model(model, (x for x, _ in batches(calib, 256, data.mean, data.std)))
    set_config(model, cfg)
    ptq_val = evaluate(model, data.val, data.mean, data.std).top1 if len(data.val) else float("nan")
    weights, quant = split_params(model)
    opt = torch.optim.AdamW([{"params": weights, "lr": qat.lr, "weight_decay": qat.weight_decay},
                             {"params": quant, "lr": qat.scale_lr, "weight_decay": 0.0}])
    steps = -(-len(data.train) // qat.batch_size)
    sched = make_scheduler(opt, "cosine", steps * max(qat.epochs, 1))
    t0 = time.perf_counter()
    for epoch in range(qat.epochs):
        with epoch_progress(f"qat {qat.config} epoch {epoch + 1}/{qat.epochs}", steps, progress) as tick:
            train_epoch(model, data.train, data.mean, data.std, opt, sched, gen, qat.batch_size,
                        spec.training.augment, data.bundle.hflip, 0.0, on_batch=tick)
    seconds = time.perf_counter() - t0
    val = evaluate(model, data.val, data.mean, data.std).top1 if len(data.val) else float("nan")
    test = evaluate(model, data.test, data.mean, data.std).top1
    out_ckpt = out_dir / "model.pt"
    save_checkpoint(out_ckpt, {
        "kind": "qat", **model_meta(fp32, example), "state_dict": model.state_dict(),
        "config": cfg.to_json(), "epoch": qat.epochs, "seed": spec.seed,
    })
    atomic_write_json(out_dir / "config.json", cfg.to_dict())
    atomic_write_json(out_dir / "metrics.json", {
        "config": qat.config, "summary": cfg.summary(), "ptq_val_acc": ptq_val, "val_acc": val,
        "test_acc": test, "epochs": qat.epochs, "seconds": seconds, "fp32_checkpoint": str(ckpt_path),
    })
    return QATResult(cfg, ptq_val, val, test, qat.epochs, seconds, out_ckpt)


def load_model(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild a checkpoint's model: FP32 as trained, QAT with its config active, a supernet in float."""
    if ckpt["kind"] == "fp32":
        return build_model_from_checkpoint(ckpt)
    from quantsearch.models import create

    base = create(ckpt["model_name"], ckpt["num_classes"], ckpt["in_channels"])
    qmodel = convert(base, QuantPolicy(), torch.zeros((2, *ckpt["input_shape"])))
    qmodel.load_state_dict(ckpt["state_dict"])
    if ckpt.get("config"):
        set_config(qmodel, SubnetConfig.from_json(ckpt["config"]))
    return qmodel
