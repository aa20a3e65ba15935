"""FP32 training from a job spec: seeded, checkpointed every epoch, resumable, with a progress bar."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from quantsearch._util import atomic_write_json, seed_everything
from quantsearch.config import JobSpec
from quantsearch.data import PreparedData
from quantsearch.device import resolve_device
from quantsearch.models import count_params, create
from quantsearch.train.checkpoint import load_checkpoint, save_checkpoint
from quantsearch.train.loop import evaluate, train_epoch, val_top1
from quantsearch.train.optim import make_optimizer, make_scheduler
from quantsearch.train.progress import epoch_progress


@dataclass(frozen=True)
class TrainResult:
    """What an FP32 training run produced."""

    checkpoint: Path
    val_acc: float
    test_acc: float
    params: int
    epochs: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def train_fp32(spec: JobSpec, data: PreparedData, out_dir: str | Path, resume: bool = True,
               progress: bool = True) -> TrainResult:
    """Train the spec's model in FP32; writes <out_dir>/model.pt and metrics.json; resumes if present."""
    out_dir = Path(out_dir)
    tr = spec.training
    device = resolve_device(spec.device)
    gen = seed_everything(spec.seed)
    model = create(spec.model.name, data.bundle.num_classes, data.bundle.in_channels).to(device)
    optimizer = make_optimizer(model.parameters(), tr.optimizer, tr.lr, tr.weight_decay, tr.momentum)
    steps_per_epoch = -(-len(data.train) // tr.batch_size)
    scheduler = make_scheduler(optimizer, tr.schedule, steps_per_epoch * tr.epochs)
    ckpt_path = out_dir / "model.pt"
    start_epoch, history, elapsed = 0, [], 0.0
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, kind="fp32")
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        gen.set_state(ckpt["rng"])
        start_epoch, history, elapsed = ckpt["epoch"], list(ckpt["history"]), float(ckpt["seconds"])
    for epoch in range(start_epoch, tr.epochs):
        t0 = time.perf_counter()
        with epoch_progress(f"fp32 epoch {epoch + 1}/{tr.epochs}", steps_per_epoch, progress) as tick:
            loss = train_epoch(model, data.train, data.mean, data.std, optimizer, scheduler, gen,
                               tr.batch_size, tr.augment, data.bundle.hflip, tr.label_smoothing, device,
                               on_batch=tick)
        val = val_top1(model, data)
        elapsed += time.perf_counter() - t0
        history.append({"epoch": epoch + 1, "train_loss": loss, "val_acc": val})
        save_checkpoint(ckpt_path, {
            "kind": "fp32", "model_name": spec.model.name, "dataset": data.bundle.name,
            "num_classes": data.bundle.num_classes, "in_channels": data.bundle.in_channels,
            "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": gen.get_state(), "epoch": epoch + 1,
            "history": history, "seconds": elapsed, "seed": spec.seed,
        })
    val_acc = val_top1(model, data)
    test_acc = evaluate(model, data.test, data.mean, data.std, device=device).top1
    result = TrainResult(ckpt_path, val_acc, test_acc, count_params(model), tr.epochs, elapsed, history)
    atomic_write_json(out_dir / "metrics.json", {
        "model": spec.model.name, "dataset": data.bundle.name, "val_acc": val_acc, "test_acc": test_acc,
        "params": result.params, "epochs": tr.epochs, "seconds": elapsed, "history": history,
    })
    return result
