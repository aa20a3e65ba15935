"""The whole stack on one device: FP32 -> LSQ QAT -> DQSS-PTQ -> supernet (1 Ray Train worker), recording the
device of every module's inputs and parameters in this process and the Ray worker's own report."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch


def stack_spec(out: Path, device: str, data: dict[str, Any]) -> dict[str, Any]:
    """A job spec running every stage for a few steps on `device` (Ray workers on GPUs when it is cuda)."""
    return {
        "name": "device-check", "seed": 0, "device": device, "output_dir": str(out), "data": data,
        "model": {"name": "resnet8"}, "training": {"epochs": 1, "batch_size": 64},
        "qat": {"config": "uniform:W4A4", "epochs": 1, "calib_images": 128},
        "dqss": {"mode": "ptq", "config": "uniform:W4A4", "iters": 5, "easyquant_steps": 5, "calib_images": 128},
        "supernet": {"epochs": 1, "batch_size": 64, "train_images": 256, "calib_images": 128, "bn_images": 128,
                     "table_bits": [8, 4], "workers": 1, "use_gpu": device.startswith("cuda"),
                     "run_name": "device-check"},
    }


def run_stack(out: Path, device: str, data: dict[str, Any]) -> dict[str, Any]:
    """Run the stack; return the device types seen by module forwards here and the Ray worker's on_cuda."""
    import mlflow
    from quantsearch.config import validate_spec
    from quantsearch.pipeline import run_job

    seen: Counter[str] = Counter()

    def record(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        for t in (*args, *module.parameters(recurse=False), *module.buffers(recurse=False)):
            if isinstance(t, torch.Tensor):
                seen[t.device.type] += 1

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        rows = run_job(validate_spec(stack_spec(out, device, data)), progress=False)
    finally:
        handle.remove()
    client = mlflow.tracking.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    on_cuda = [r.data.metrics["on_cuda"] for r in runs if "on_cuda" in r.data.metrics]
    return {"devices": dict(seen), "worker_on_cuda": on_cuda, "stages": [r.stage for r in rows]}


def check(result: dict[str, Any], device_type: str) -> None:
    """Every tensor a forward saw was on `device_type`, every stage ran, the Ray worker trained there too."""
    assert set(result["devices"]) == {device_type}, f"tensors off {device_type}: {result['devices']}"
    stages = " ".join(result["stages"])
    for stage in ("fp32", "LSQ QAT", "DQSS-PTQ", "supernet"):
        assert stage in stages, f"stage {stage} missing from {result['stages']}"
    assert result["worker_on_cuda"] == [1.0 if device_type == "cuda" else 0.0]
