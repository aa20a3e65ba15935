"""Post-training quantization of one fixed config with a named calibration method, from an FP32 checkpoint (a
job: the core is `quantsearch.quantize` + `quantsearch.calibrate`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from quantsearch._util import atomic_write_json
from quantsearch.config import QuantTarget
from quantsearch.data import ArrayBatches, PreparedData, take
from quantsearch.device import resolve_device
from quantsearch.quant import calibrate
from quantsearch.space import SubnetConfig, quantized_model, resolve_config, set_config
from quantsearch.train.checkpoint import load_checkpoint, model_meta, save_checkpoint
from quantsearch.train.loop import evaluate, val_top1


@dataclass(frozen=True)
class PTQResult:
    """Accuracy of a calibrated (untrained) quantized model."""

    config: SubnetConfig
    method: str
    val_acc: float
    test_acc: float
    seconds: float
    checkpoint: Path


def calibrate_ptq(fp32_path: str | Path, data: PreparedData, target: QuantTarget, act_method: str,
                  weight_method: str, out_dir: str | Path, seed: int = 0, device: str | torch.device = "cpu"
                  ) -> PTQResult:
    """Convert, set the target's config, calibrate its forms with the methods, evaluate; save model.pt +
    metrics.json."""
    fp32 = load_checkpoint(fp32_path, kind="fp32")
    example = data.example(seed)
    model = quantized_model(fp32, example, resolve_device(device))
    cfg = resolve_config(target, model)
    set_config(model, cfg)
    calib = take(data.train, target.calib_images, seed + 1)
    t0 = time.perf_counter()
    report = calibrate(model, ArrayBatches(calib, 256, data.mean, data.std), act_method, weight_method=weight_method)
    seconds = time.perf_counter() - t0
    val = val_top1(model, data)
    test = evaluate(model, data.test, data.mean, data.std).top1
    out_dir = Path(out_dir)
    ckpt = out_dir / "model.pt"
    method = act_method if act_method == weight_method else f"{act_method}/{weight_method}"
    save_checkpoint(ckpt, {"kind": "ptq", **model_meta(fp32, example), "state_dict": model.state_dict(),
                           "config": cfg.to_json(), "method": method, "seed": seed})
    atomic_write_json(out_dir / "metrics.json", {"config": target.config, "method": method, "val_acc": val,
                                                 "test_acc": test, "calibration_seconds": seconds,
                                                 "calib_images": target.calib_images, "easyquant": report})
    return PTQResult(cfg, method, val, test, seconds, ckpt)
