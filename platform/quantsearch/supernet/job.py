"""The supernet job: from a job spec and an FP32 checkpoint, the seeded, sharded in-memory batches, per-epoch
measurement on val and checkpoints to <out_dir>/supernet.pt (in-process here; distributed/ runs it on Ray Train)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from quantsearch.config import JobSpec, SupernetSpec
from quantsearch.data import ArrayBatches, ImageSet, PreparedData, batches, take
from quantsearch.device import resolve_device
from quantsearch.space import build_model_from_checkpoint
from quantsearch.supernet.measure import measure
from quantsearch.supernet.sampling import net_forms
from quantsearch.supernet.trainer import Progress, SupernetRun, build_run, fit, load_state, state_payload
from quantsearch.train.checkpoint import load_checkpoint, save_checkpoint
from quantsearch.train.progress import epoch_progress


class ShardedBatches:
    """One rank's batches of an epoch: a seeded permutation of the whole set (the same on every rank, drawn from
    `generator` at the start of each pass), this rank's every world-th image, and the same number of steps on
    every rank."""

    def __init__(self, data: ImageSet, batch_size: int, mean: float, std: float, generator: torch.Generator,
                 rank: int = 0, world: int = 1) -> None:
        self.data, self.batch_size, self.mean, self.std = data, batch_size, mean, std
        self.generator, self.rank, self.world = generator, rank, world

    def __len__(self) -> int:
        return -(-len(self.data) // (self.batch_size * self.world))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(len(self.data), generator=self.generator)
        shard = self.data.subset(perm[self.rank::self.world])
        steps = len(self)
        for i, batch in enumerate(batches(shard, self.batch_size, self.mean, self.std)):
            if i >= steps:  # ranks with a longer shard stop together with the others
                return
            yield batch


def supernet_data(spec: JobSpec, data: PreparedData) -> PreparedData:
    """The data the supernet trains on: the train split, or a seeded subset of it (train_images)."""
    sn = spec.supernet or SupernetSpec()
    if sn.train_images is None:
        return data
    return replace(data, train=take(data.train, sn.train_images, spec.seed + 2))


def build_job_run(spec: JobSpec, data: PreparedData, fp32: dict[str, Any], world: int = 1,
                  device: str | torch.device | None = None) -> SupernetRun:
    """The FP32 checkpoint's model on `device` (default: the job's), converted and calibrated on
    `supernet.calib_images` training images; `data` is what the supernet trains on (supernet_data)."""
    sn = spec.supernet or SupernetSpec()
    dev = resolve_device(spec.device if device is None else device)
    example = data.example(0).to(dev)
    model = build_model_from_checkpoint(fp32).to(dev)
    calib = take(data.train, sn.calib_images, spec.seed + 1)
    steps = -(-len(data.train) // (sn.batch_size * world))
    return build_run(model, sn, ArrayBatches(calib, 256, data.mean, data.std), steps, seed=spec.seed,
                     example=example)


def fit_job(run: SupernetRun, data: PreparedData, sn: SupernetSpec, rank: int = 0, world: int = 1,
            sync_grads: Callable[[torch.nn.Module], None] | None = None,
            save: Callable[[SupernetRun, dict[str, float]], None] | None = None,
            progress: Progress | None = None) -> SupernetRun:
    """Train this rank's shard from run.epoch to sn.epochs; after each epoch measure the max and min subnets on
    val (BN recalibrated on `sn.bn_images` training images) and call `save`."""

    def max_min(r: SupernetRun) -> dict[str, float]:
        form = net_forms(r.space)[0]
        return {"val_acc_max": measure(r.model, r.sampler.max_config(form), data, sn.bn_images).val_acc,
                "val_acc_min": measure(r.model, r.sampler.min_config(form), data, sn.bn_images).val_acc}

    loader = ShardedBatches(data.train, sn.batch_size, data.mean, data.std, run.gen, rank, world)
    return fit(run, loader, sn, sync_grads, max_min, save, progress)


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
    fp32 = load_checkpoint(spec.fp32_checkpoint("supernet"), kind="fp32")
    data = supernet_data(spec, data)
    run = build_job_run(spec, data, fp32)
    ckpt_path = out_dir / "supernet.pt"
    if ckpt_path.exists():
        load_state(run, load_checkpoint(ckpt_path, kind="supernet"))
    shape = list(data.train.image_shape)

    def save(r: SupernetRun, metrics: dict[str, float]) -> None:
        save_checkpoint(ckpt_path, supernet_payload(r, fp32, spec, shape))
        if on_epoch is not None:
            on_epoch(metrics)

    return fit_job(run, data, sn, save=save,
                   progress=(lambda label, total: epoch_progress(label, total)) if progress else None)
