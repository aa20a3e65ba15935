"""Cost of fake quantization: converted compact ResNet at W4A4 vs FP32 (forward+backward, same batch,
same process), and the fake-quant op against torch's fused fake_quantize_per_channel_affine.

usage: python benchmarks/quant_overhead.py [--batch 128] [--repeats 20]
Targets: W4A4 step <= 1.5x FP32; fake-quant op throughput >= 0.8x torch's.
"""

from __future__ import annotations

import argparse

import torch
from _common import median_time, write_result
from quantsearch.models import create
from quantsearch.quant import QuantForm, QuantPolicy, calibrate_model, convert
from quantsearch.quant.quantizer import ElasticQuantizer
from quantsearch.space import model_uniform, set_config


def main() -> None:
    """Measure and write results/quant_overhead.json."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    fp32 = create("resnet8", 10, 1)
    x = torch.randn(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    q = convert(fp32, QuantPolicy(), x[:2])
    calibrate_model(q, [x])
    set_config(q, model_uniform(q, QuantForm(4, "per_channel", True), QuantForm(4, "per_tensor", False)))

    def step(model: torch.nn.Module):
        def run() -> None:
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
        return run

    fp32.train()
    q.train()
    t_fp32 = median_time(step(fp32), args.repeats)
    t_q = median_time(step(q), args.repeats)
    ratio = t_q / t_fp32

    w = torch.randn(64, 64, 3, 3)
    wq = ElasticQuantizer("weight", 64)
    wq.calibrate(w)
    form = QuantForm(4, "per_channel", True)
    wq.set_form(form)
    scale = wq.qparams(form)[0].detach().abs().contiguous()
    zeros = torch.zeros(64, dtype=torch.int32)
    big = torch.randn(64, 64, 28, 28)  # an activation-sized tensor, channel axis 0 for both ops
    wq_big = ElasticQuantizer("weight", 64)
    wq_big.load_state_dict(wq.state_dict())
    wq_big.set_form(form)
    with torch.no_grad():
        t_ours = median_time(lambda: wq_big(big), args.repeats)
        t_torch = median_time(lambda: torch.fake_quantize_per_channel_affine(big, scale, zeros, 0, -8, 7), args.repeats)
    throughput_ratio = t_torch / t_ours
    print(f"forward+backward, batch {args.batch}: FP32 {1e3 * t_fp32:.1f} ms, W4A4 {1e3 * t_q:.1f} ms "
          f"-> {ratio:.2f}x (target <= 1.5x)")
    print(f"fake-quant op on {tuple(big.shape)}: ours {1e3 * t_ours:.2f} ms, torch {1e3 * t_torch:.2f} ms "
          f"-> throughput {throughput_ratio:.2f}x of torch (target >= 0.8x)")
    write_result("quant_overhead", {
        "model": "resnet8", "batch": args.batch, "config": "W4A4 per-channel sym weights, affine activations",
        "fp32_step_ms": 1e3 * t_fp32, "w4a4_step_ms": 1e3 * t_q, "step_ratio": ratio, "step_target": "<= 1.5",
        "step_target_met": ratio <= 1.5,
        "fakequant_tensor": list(big.shape), "ours_ms": 1e3 * t_ours, "torch_ms": 1e3 * t_torch,
        "throughput_ratio": throughput_ratio, "throughput_target": ">= 0.8",
        "throughput_target_met": throughput_ratio >= 0.8,
    })


if __name__ == "__main__":
    main()
