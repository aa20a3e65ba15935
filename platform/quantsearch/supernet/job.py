"""In-process supernet training (no Ray): the same loop, checkpointed to <out_dir>/supernet.pt."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantsearch.config import JobSpec, SupernetSpec
from quantsearch.data import PreparedData
from quantsearch.supernet.trainer import SupernetRun, build_run, fit, load_state, state_payload, supernet_data
from quantsearch.train.checkpoint import load_checkpoint, save_checkpoint
from quantsearch.train.progress import epoch_progress


def fp32_checkpoint_path(spec: JobSpec) -> Path:
    """The FP32 checkpoint a supernet starts from."""
    sn = spec.supernet or SupernetSpec()
    return Path(sn.checkpoint or Path(spec.output_dir) / "fp32" / "model.pt")


def supernet_payload(run: SupernetRun, fp32: dict[str, Any], spec: JobSpec, example_shape: list[int]) -> dict[str, Any]:
    """A full supernet checkpoint: resumable state plus what rebuilds the model."""
    sn = spec.supernet or SupernetSpec()
    return {"kind": "supernet", "model_name": fp32["model_name"], "dataset": fp32["dataset"],
            "num_classes": fp32["num_classes"], "in_channels": fp32["in_channels"], "input_shape": example_shape,
            "profile": sn.profile, "seed": spec.seed, **state_payload(run)}


def train_supernet_local(spec: JobSpec, data: PreparedData, out_dir: str | Path, progress: bool = True,
                         on_epoch: Callable[[dict[str, float]], None] | None = None) -> SupernetRun:
    """Train in this process; resumes from <out_dir>/supernet.pt when present."""
    sn = spec.supernet or SupernetSpec()
    out_dir = Path(out_dir)
    fp32 = load_checkpoint(fp32_checkpoint_path(spec), kind="fp32")
    data = supernet_data(spec, data)
    run = build_run(spec, data, fp32)
    ckpt_path = out_dir / "supernet.pt"
    if ckpt_path.exists():
        load_state(run, load_checkpoint(ckpt_path, kind="supernet"))
    shape = list(data.train.images.shape[1:])

    def save(r: SupernetRun, metrics: dict[str, float]) -> None:
        save_checkpoint(ckpt_path, supernet_payload(r, fp32, spec, shape))
        if on_epoch is not None:
            on_epoch(metrics)

    return fit(run, data, sn, save=save, progress=(lambda label, total: epoch_progress(label, total)) if progress
               else None)
