"""Supernet training throughput with 1 and 2 Ray Train workers, and the sandwich step's cost vs FP32.

usage: python benchmarks/train_scaling.py [--images 4096]
Writes results/train_scaling.json. On this 2-core machine two workers share the same cores.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _common import RUNS, median_time, write_result
from quantsearch.config import JobSpec
from quantsearch.data import batches, prepare_data
from quantsearch.distributed import train_supernet_ray
from quantsearch.space import load_model
from quantsearch.supernet import build_job_run, sandwich_step
from quantsearch.train import load_checkpoint, train_fp32


def main() -> None:
    """Measure and write JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    ckpt = RUNS / "fp32-resnet8" / "model.pt"
    base = {"name": "scaling", "output_dir": str(RUNS / "scaling"), "model": {"name": "resnet8"},
            "supernet": {"epochs": 1, "batch_size": 128, "train_images": args.images, "bn_images": 512,
                         "checkpoint": str(ckpt)}, "scaling": {"max_failures": 0}}
    spec = JobSpec.model_validate(base)
    data = prepare_data(spec.data)
    if not ckpt.exists():
        train_fp32(spec, data, ckpt.parent, progress=False)
    throughput = {}
    for workers in (1, 2):
        s = JobSpec.model_validate({**base, "scaling": {**base["scaling"],
                                                        "run_name": f"scaling-{workers}w-{int(time.time())}"}})
        res = train_supernet_ray(s, ckpt, RUNS / "scaling" / f"w{workers}", workers)
        secs = res.metrics["epoch_seconds"]
        throughput[workers] = args.images / secs
        print(f"{workers} worker(s): {args.images} images in {secs:.1f}s -> {throughput[workers]:.0f} images/s")
    # the sandwich step (WDR + max + 2 random + min) vs one FP32 step, same batch, in-process
    run = build_job_run(spec, data, load_checkpoint(ckpt))
    x, y = next(batches(data.train, 128, data.mean, data.std))
    fp32 = load_model(load_checkpoint(ckpt))
    opt = torch.optim.Adam(fp32.parameters(), 1e-4)

    def fp32_step() -> None:
        opt.zero_grad()
        F.cross_entropy(fp32(x), y).backward()
        opt.step()

    t_fp32 = median_time(fp32_step, args.repeats)
    t_sandwich = median_time(lambda: sandwich_step(run, x, y, spec.supernet), args.repeats)
    print(f"step, batch 128: FP32 {1e3 * t_fp32:.1f} ms, sandwich {1e3 * t_sandwich:.1f} ms "
          f"-> {t_sandwich / t_fp32:.2f}x")
    write_result("train_scaling", {
        "images": args.images, "batch_per_worker": 128,
        "throughput_images_per_s": {f"{k}_workers": v for k, v in throughput.items()},
        "speedup_2_vs_1": throughput[2] / throughput[1],
        "fp32_step_ms": 1e3 * t_fp32, "sandwich_step_ms": 1e3 * t_sandwich, "sandwich_over_fp32": t_sandwich / t_fp32,
        "note": "2 CPU cores: two workers compete for the same cores, so no speed-up is expected here",
    })


if __name__ == "__main__":
    main()
