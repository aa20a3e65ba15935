"""Cost of fake quantization: converted compact ResNet at W4A4 vs FP32 (forward+backward, same batch, same process),
eager and torch.compile'd side by side; recompilations of one compiled converted model over 20 random subnets; and
the fake-quant op against torch's fused fake_quantize_per_channel_affine.

usage: python benchmarks/quant_overhead.py [--batch 128] [--repeats 20] [--backend inductor] [--quick]
Targets: eager W4A4 step <= 1.5x eager FP32; compiled W4A4 step <= 1.3x compiled FP32; 0 recompilations over 20
random subnets after warm-up; fake-quant op throughput >= 0.8x torch's. --quick: batch 16, 3 repeats, 5 subnets,
backend aot_eager (a smoke run of the script, well under a minute, into quant_overhead_quick.json; its figures
mean nothing).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch._dynamo
from _common import median_time, write_result
from quantsearch.models import create
from quantsearch.quant import QuantForm, QuantPolicy, calibrate_model, convert, get_profile
from quantsearch.quant.quantizer import ElasticQuantizer
from quantsearch.space import SearchSpace, model_uniform, set_config
from quantsearch.supernet import SandwichSampler


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return run


def _recompiles(q: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, n: int) -> dict[str, object]:
    """Frames compiled by one torch.compile'd model over a warm-up subnet and then `n` random subnets (the
    sandwich sampler's), forward+backward each."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")  # graph capture and autograd as inductor sees them, no codegen
    compiled = torch.compile(q, backend=counter)
    sampler = SandwichSampler(SearchSpace.for_model(q, get_profile("generic")), seed=0)
    set_config(q, sampler.max_config(sampler.form()))
    _step(compiled, x, y)()
    warm = counter.frame_count
    for cfg in [sampler.min_config(sampler.form()), *sampler.random_configs(n - 1)]:
        set_config(q, cfg)
        _step(compiled, x, y)()
    return {"subnets": n, "frames_after_warmup": warm, "recompilations": counter.frame_count - warm}


def main() -> None:
    """Measure and write results/quant_overhead.json (quick: results/quant_overhead_quick.json)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--backend", default="inductor", help="torch.compile backend of the compiled column")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny batch, few repeats, separate JSON")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.repeats, args.backend = 16, 3, "aot_eager"
    n_subnets = 5 if args.quick else 20
    torch.manual_seed(0)
    fp32 = create("resnet8", 10, 1)
    x = torch.randn(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    q = convert(fp32, QuantPolicy(), x[:2])
    calibrate_model(q, [x])
    w4a4 = model_uniform(q, QuantForm(4, "per_channel", True), QuantForm(4, "per_tensor", False))
    set_config(q, w4a4)
    fp32.train()
    q.train()

    times: dict[str, dict[str, float]] = {}
    compile_s: dict[str, float] = {}
    for mode in ("eager", "compiled"):
        torch._dynamo.reset()
        models = {"fp32": fp32, "w4a4": q}
        if mode == "compiled":
            models = {k: torch.compile(m, backend=args.backend) for k, m in models.items()}
            for k, m in models.items():  # the first call compiles: timed apart from the steps
                t0 = time.perf_counter()
                _step(m, x, y)()
                compile_s[k] = time.perf_counter() - t0
        times[mode] = {k: median_time(_step(m, x, y), args.repeats) for k, m in models.items()}
    ratio = {mode: t["w4a4"] / t["fp32"] for mode, t in times.items()}
    recompiles = _recompiles(q, x, y, n_subnets)
    set_config(q, w4a4)

    w = torch.randn(64, 64, 3, 3)
    wq = ElasticQuantizer("weight", 64)
    wq.calibrate(w)
    form = QuantForm(4, "per_channel", True)
    wq.set_form(form)
    scale = wq.qparams(form)[0].detach().abs().contiguous()
    zeros = torch.zeros(64, dtype=torch.int32)
    big = torch.randn(64, 16 if args.quick else 64, 28, 28)  # activation-sized, channel axis 0 for both ops
    wq_big = ElasticQuantizer("weight", 64)
    wq_big.load_state_dict(wq.state_dict())
    wq_big.set_form(form)
    with torch.no_grad():
        t_ours = median_time(lambda: wq_big(big), args.repeats)
        t_torch = median_time(lambda: torch.fake_quantize_per_channel_affine(big, scale, zeros, 0, -8, 7), args.repeats)
    throughput_ratio = t_torch / t_ours
    for mode in ("eager", "compiled"):
        t = times[mode]
        target = 1.5 if mode == "eager" else 1.3
        print(f"{mode:8s} forward+backward, batch {args.batch}: FP32 {1e3 * t['fp32']:.1f} ms, "
              f"W4A4 {1e3 * t['w4a4']:.1f} ms -> {ratio[mode]:.2f}x (target <= {target}x)")
    print(f"compiled FP32 vs eager FP32: {times['eager']['fp32'] / times['compiled']['fp32']:.2f}x faster; "
          f"W4A4: {times['eager']['w4a4'] / times['compiled']['w4a4']:.2f}x faster "
          f"(first calls, compiling: FP32 {compile_s['fp32']:.0f}s, W4A4 {compile_s['w4a4']:.0f}s)")
    print(f"recompilations over {n_subnets} random subnets after warm-up: {recompiles['recompilations']} "
          f"(target 0)")
    print(f"fake-quant op on {tuple(big.shape)}: ours {1e3 * t_ours:.2f} ms, torch {1e3 * t_torch:.2f} ms "
          f"-> throughput {throughput_ratio:.2f}x of torch (target >= 0.8x)")
    write_result("quant_overhead_quick" if args.quick else "quant_overhead", {
        "model": "resnet8", "batch": args.batch, "config": "W4A4 per-channel sym weights, affine activations",
        # eager (the figures this benchmark always reported)
        "fp32_step_ms": 1e3 * times["eager"]["fp32"], "w4a4_step_ms": 1e3 * times["eager"]["w4a4"],
        "step_ratio": ratio["eager"], "step_target": "<= 1.5", "step_target_met": ratio["eager"] <= 1.5,
        # torch.compile, same models, same batch
        "compile_backend": args.backend,
        "compiled_fp32_step_ms": 1e3 * times["compiled"]["fp32"],
        "compiled_w4a4_step_ms": 1e3 * times["compiled"]["w4a4"],
        "compiled_step_ratio": ratio["compiled"], "compiled_step_target": "<= 1.3",
        "compiled_step_target_met": ratio["compiled"] <= 1.3,
        "compile_speedup_fp32": times["eager"]["fp32"] / times["compiled"]["fp32"],
        "compile_speedup_w4a4": times["eager"]["w4a4"] / times["compiled"]["w4a4"],
        "compile_seconds": compile_s,
        "recompilations": recompiles, "recompilations_target": "0 after warm-up",
        "recompilations_target_met": recompiles["recompilations"] == 0,
        "fakequant_tensor": list(big.shape), "ours_ms": 1e3 * t_ours, "torch_ms": 1e3 * t_torch,
        "throughput_ratio": throughput_ratio, "throughput_target": ">= 0.8",
        "throughput_target_met": throughput_ratio >= 0.8,
    })


if __name__ == "__main__":
    main()
