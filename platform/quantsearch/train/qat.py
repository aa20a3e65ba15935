"""Independent LSQ quantization-aware training of one fixed config, from an FP32 checkpoint (a job).

This is the baseline the EQ-Net supernet is compared against: the same converted model, calibrated with
the MSE clip search, then weights, scales and offsets trained together at one fixed SubnetConfig.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from quantsearch._util import atomic_write_json, seed_everything
from quantsearch.config import JobSpec
from quantsearch.data import ArrayBatches, PreparedData, take
from quantsearch.device import resolve_device
from quantsearch.errors import ConfigError
from quantsearch.quant import calibrate_model, split_params
from quantsearch.space import SubnetConfig, quantized_model, resolve_config, set_config
from quantsearch.train.checkpoint import load_checkpoint, model_meta, save_checkpoint
from quantsearch.train.compiling import maybe_compile
from quantsearch.train.loop import evaluate, train_epoch, val_top1
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


def train_qat(spec: JobSpec, data: PreparedData, out_dir: str | Path, progress: bool = True) -> QATResult:
    """Calibrate, then LSQ-train the config of `spec.qat`; writes model.pt, config.json, metrics.json."""
    if spec.qat is None:
        raise ConfigError("the job has no 'qat' section; add one or pass --config")
    qat, target = spec.qat, spec.qat.target
    out_dir = Path(out_dir)
    ckpt_path = spec.fp32_checkpoint("qat")
    fp32 = load_checkpoint(ckpt_path, kind="fp32")
    gen = seed_everything(spec.seed)
    device = resolve_device(spec.device)
    example = data.example(spec.seed)
    model = quantized_model(fp32, example, device)
    cfg = resolve_config(target, model)
    calib = take(data.train, target.calib_images, spec.seed + 1)
    calibrate_model(model, ArrayBatches(calib, 256, data.mean, data.std))
    set_config(model, cfg)
    ptq_val = val_top1(model, data)
    weights, quant = split_params(model)
    opt = torch.optim.AdamW([{"params": weights, "lr": qat.lr, "weight_decay": qat.weight_decay},
                             {"params": quant, "lr": qat.scale_lr, "weight_decay": 0.0}])
    steps = -(-len(data.train) // qat.batch_size)
    sched = make_scheduler(opt, "cosine", steps * max(qat.epochs, 1))
    net = maybe_compile(model, qat.compile, device)  # trains `model`'s own parameters; checkpoints read `model`
    t0 = time.perf_counter()
    for epoch in range(qat.epochs):
        with epoch_progress(f"qat {target.config} epoch {epoch + 1}/{qat.epochs}", steps, progress) as tick:
            train_epoch(net, data.train, data.mean, data.std, opt, sched, gen, qat.batch_size,
                        spec.training.augment, data.bundle.hflip, 0.0, on_batch=tick)
    seconds = time.perf_counter() - t0
    val = val_top1(model, data)
    test = evaluate(model, data.test, data.mean, data.std).top1
    out_ckpt = out_dir / "model.pt"
    save_checkpoint(out_ckpt, {
        "kind": "qat", **model_meta(fp32, example), "state_dict": model.state_dict(),
        "config": cfg.to_json(), "epoch": qat.epochs, "seed": spec.seed,
    })
    atomic_write_json(out_dir / "config.json", cfg.to_dict())
    atomic_write_json(out_dir / "metrics.json", {
        "config": target.config, "summary": cfg.summary(), "ptq_val_acc": ptq_val, "val_acc": val,
        "test_acc": test, "epochs": qat.epochs, "seconds": seconds, "fp32_checkpoint": str(ckpt_path),
        "compiled": net is not model,
    })
    return QATResult(cfg, ptq_val, val, test, qat.epochs, seconds, out_ckpt)
