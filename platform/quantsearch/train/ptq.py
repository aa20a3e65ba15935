"""Post-training quantization of one fixed config with a named calibration method (no training)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from quantsearch._util import atomic_write_json
from quantsearch.config import QATSpec
from quantsearch.data import PreparedData, batches, take
from quantsearch.device import resolve_device
from quantsearch.quant.methods import calibrate_active
from quantsearch.space import SubnetConfig, set_config
from quantsearch.train.checkpoint import load_checkpoint, model_meta, save_checkpoint
from quantsearch.train.loop import evaluate
from quantsearch.train.qat import quantized_model, resolve_config


@dataclass(frozen=True)
class PTQResult:
    """Accuracy of a calibrated (untrained) quantized model."""

    config: SubnetConfig
    method: str
    val_acc: float
    test_acc: float
    seconds: float
    checkpoint: Path


def calibrate_ptq(fp32_path: str | Path, data: PreparedData, qat: QATSpec, act_method: str, weight_method: str,
                  out_dir: str | Path, seed: int = 0, device: str | torch.device = "cpu") -> PTQResult:
    """Convert, set the config, calibrate its forms with the methods, evaluate; save model.pt + metrics.json."""
    fp32 = load_checkpoint(fp32_path, kind="fp32")
    example = data.example(seed)
    model = quantized_model(fp32, example, resolve_device(device))
    cfg = resolve_config(qat, model)
    set_config(model, cfg)
    calib = take(data.train, qat.calib_images, seed + 1)
    t0 = time.perf_counter()
    report = calibrate_active(model, (x for x, _ in batches(calib, 256, data.mean, data.std)),
                              (act_method, weight_method))
    seconds = time.perf_counter() - t0
    val = evaluate(model, data.val, data.mean, data.std).top1 if len(data.val) else float("nan")
    test = evaluate(model, data.test, data.mean, data.std).top1
    out_dir = Path(out_dir)
    ckpt = out_dir / "model.pt"
    method = act_method if act_method == weight_method else f"{act_method}/{weight_method}"
    save_checkpoint(ckpt, {"kind": "ptq", **model_meta(fp32, example), "state_dict": model.state_dict(),
                           "config": cfg.to_json(), "method": method, "seed": seed})
    atomic_write_json(out_dir / "metrics.json", {"config": qat.config, "method": method, "val_acc": val,
                                                 "test_acc": test, "calibration_seconds": seconds,
                                                 "calib_images": qat.calib_images, "easyquant": report})
    return PTQResult(cfg, method, val, test, seconds, ckpt)
