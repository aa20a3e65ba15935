"""Supernet training throughput with 1 and 2 Ray Train workers, and the sandwich step's cost vs an FP32 step of the
same mode, eager and torch.compile'd side by side (with the compiled run's recompilations over the timed steps).

usage: python benchmarks/train_scaling.py [--images 4096] [--repeats 7] [--backend inductor] [--quick]
Writes results/train_scaling.json. On this 2-core machine two workers share the same cores.
Target: sandwich step (WDR + max + 2 random + min) <= 4.5x an FP32 step, eager and compiled; 0 recompilations after
warm-up. Also timed: the sandwich's 4 subnets' forward+backward passes alone (one draw, plain cross-entropy instead of
the distillation loss, no WDR, no optimizer step) and 4 FP32 forward+backward passes,
each against one FP32 step: what quantization itself adds, and what four passes cost even in FP32.
--quick: no Ray, batch 16, 2 repeats, backend aot_eager, into train_scaling_quick.json (a smoke run of the script;
its figures mean nothing).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch._dynamo
import torch.nn.functional as F
from _common import RUNS, median_time, write_result
from quantsearch.config import JobSpec
from quantsearch.data import batches, prepare_data
from quantsearch.space import load_model, set_config
from quantsearch.supernet import build_job_run, sandwich_step
from quantsearch.train import compiling, load_checkpoint, train_fp32

TARGET = 4.5


def _ray_throughput(base: dict, ckpt, images: int) -> dict[int, float]:
    from quantsearch.distributed import train_supernet_ray

    throughput = {}
    for workers in (1, 2):
        s = JobSpec.model_validate({**base, "scaling": {**base["scaling"],
                                                        "run_name": f"scaling-{workers}w-{int(time.time())}"}})
        res = train_supernet_ray(s, ckpt, RUNS / "scaling" / f"w{workers}", workers)
        secs = res.metrics["epoch_seconds"]
        throughput[workers] = images / secs
        print(f"{workers} worker(s): {images} images in {secs:.1f}s -> {throughput[workers]:.0f} images/s")
    return throughput


def main() -> None:
    """Measure and write JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--backend", default="inductor", help="torch.compile backend of the compiled column")
    ap.add_argument("--quick", action="store_true", help="smoke run: no Ray, tiny batch, separate JSON")
    args = ap.parse_args()
    batch = 128
    if args.quick:
        args.images, args.repeats, args.backend, batch = 256, 2, "aot_eager", 16
    ckpt = RUNS / "fp32-resnet8" / "model.pt"
    base = {"name": "scaling", "output_dir": str(RUNS / "scaling"), "model": {"name": "resnet8"},
            "data": {"train_limit": 2048} if args.quick else {},
            "supernet": {"epochs": 1, "batch_size": batch, "train_images": args.images, "bn_images": 512,
                         "checkpoint": str(ckpt), **({"calib_images": 64} if args.quick else {})},
            "scaling": {"max_failures": 0}}
    spec = JobSpec.model_validate(base)
    data = prepare_data(spec.data)
    if not ckpt.exists():
        train_fp32(spec, data, ckpt.parent, progress=False)
    throughput = {} if args.quick else _ray_throughput(base, ckpt, args.images)
    # the sandwich step (WDR + max + 2 random + min) vs one FP32 step, same batch, in-process, eager and compiled
    x, y = next(batches(data.train, batch, data.mean, data.std))
    compiling.BACKEND = args.backend
    ms: dict[str, dict[str, float]] = {}
    recompilations = 0
    for mode in ("eager", "compiled"):
        torch._dynamo.reset()
        sn = spec.supernet.model_copy(update={"compile": mode == "compiled"})  # type: ignore[union-attr]
        run = build_job_run(spec.model_copy(update={"supernet": sn}), data, load_checkpoint(ckpt))
        fp32 = load_model(load_checkpoint(ckpt)).train()
        net = torch.compile(fp32, backend=args.backend) if mode == "compiled" else fp32
        opt = torch.optim.Adam(fp32.parameters(), 1e-4)

        def fp32_step(net: torch.nn.Module = net, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()

        t_fp32 = median_time(fp32_step, args.repeats)
        sandwich_step(run, x, y, sn)  # warm-up: compiles the graph (and the WDR function) once
        frames = torch._dynamo.utils.counters["frames"]["ok"]
        t_sandwich = median_time(lambda run=run, sn=sn: sandwich_step(run, x, y, sn), args.repeats)
        if mode == "compiled":  # every timed step trained 2 + n_random new subnets
            recompilations = torch._dynamo.utils.counters["frames"]["ok"] - frames
        # where the sandwich's time goes: its 2 + n_random forward+backward passes alone (one draw of subnets, no WDR,
        # no optimizer step), against the same number of FP32 forward+backward passes
        form = run.sampler.form()
        cfgs = [run.sampler.max_config(form), *run.sampler.random_configs(sn.n_random), run.sampler.min_config(form)]

        def quant_passes(run=run, cfgs=cfgs) -> None:
            for cfg in cfgs:
                set_config(run.model, cfg)
                run.model.zero_grad(set_to_none=True)
                F.cross_entropy(run.forward_module()(x), y).backward()

        def fp32_passes(net: torch.nn.Module = net, n: int = len(cfgs)) -> None:
            for _ in range(n):
                net.zero_grad(set_to_none=True)
                F.cross_entropy(net(x), y).backward()

        t_quant = median_time(quant_passes, args.repeats)
        t_fp32_passes = median_time(fp32_passes, args.repeats)
        ms[mode] = {"fp32_step_ms": 1e3 * t_fp32, "sandwich_step_ms": 1e3 * t_sandwich,
                    "sandwich_over_fp32": t_sandwich / t_fp32, "subnet_passes": len(cfgs),
                    "quantized_passes_ms": 1e3 * t_quant, "fp32_passes_ms": 1e3 * t_fp32_passes,
                    "quantized_passes_over_fp32_step": t_quant / t_fp32,
                    "fp32_passes_over_fp32_step": t_fp32_passes / t_fp32}
        print(f"{mode:8s} step, batch {batch}: FP32 {1e3 * t_fp32:.1f} ms, sandwich {1e3 * t_sandwich:.1f} ms "
              f"-> {t_sandwich / t_fp32:.2f}x (target <= {TARGET}x); its {len(cfgs)} quantized forward+backward "
              f"passes alone {1e3 * t_quant:.1f} ms = {t_quant / t_fp32:.2f}x, {len(cfgs)} FP32 passes "
              f"{1e3 * t_fp32_passes:.1f} ms = {t_fp32_passes / t_fp32:.2f}x")
    steps = args.repeats + 3  # median_time's warm-up runs
    subnets = steps * (2 + spec.supernet.n_random)  # type: ignore[union-attr]
    print(f"compiled sandwich: {recompilations} recompilations over {steps} steps ({subnets} subnets) after "
          f"warm-up (target 0)")
    write_result("train_scaling_quick" if args.quick else "train_scaling", {
        "images": args.images, "batch_per_worker": batch,
        "throughput_images_per_s": {f"{k}_workers": v for k, v in throughput.items()},
        **({"speedup_2_vs_1": throughput[2] / throughput[1]} if throughput else {}),
        # eager (the figures this benchmark always reported)
        **ms["eager"], "sandwich_target": f"<= {TARGET}",
        "sandwich_target_met": ms["eager"]["sandwich_over_fp32"] <= TARGET,
        "compiled": {**ms["compiled"], "backend": args.backend, "sandwich_target": f"<= {TARGET}",
                     "sandwich_target_met": ms["compiled"]["sandwich_over_fp32"] <= TARGET,
                     "recompilations_after_warmup": recompilations, "timed_steps": steps,
                     "subnets_after_warmup": subnets, "recompilations_target_met": recompilations == 0},
        "compile_speedup_sandwich": ms["eager"]["sandwich_step_ms"] / ms["compiled"]["sandwich_step_ms"],
        "compile_speedup_fp32": ms["eager"]["fp32_step_ms"] / ms["compiled"]["fp32_step_ms"],
        "note": "2 CPU cores: two workers compete for the same cores, so no speed-up is expected here",
    })


if __name__ == "__main__":
    main()
