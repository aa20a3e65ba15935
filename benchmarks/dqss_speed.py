"""DQSS speed: the efficient mixed layer vs the naive N^2 reference, and vectorised KL vs loops.

usage: python benchmarks/dqss_speed.py [--repeats 7]

1. Forward+backward of one mixed layer, N = 4 strategies, a 64-channel 3x3 conv at 28x28, batch 64
   (per-channel symmetric 4-bit weights, per-tensor affine 4-bit activations), gradients for x, W, alpha, beta.
   Time: median of --repeats runs. Memory, two measures:
   - peak RSS growth of a fresh process during one forward+backward (what the target is judged on), and
   - bytes autograd saves for backward (exact; storages counted once).
   Targets: >= 8x faster, <= 1/4 of the memory.
2. KL calibration of one activation tensor (the 64x64x28x28 input; 2048-bin histogram, then the threshold)
   at 8 and 4 bits: the vectorised quant/kl.py vs the reference loop in tests/unit/test_calibrators.py
   (target >= 20x), and -- a stronger baseline we add -- a loop over cuts with torch ops inside.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from _common import ROOT, median_time, write_result
from quantsearch.dqss import mix_quant, naive_mixed_forward
from quantsearch.quant import QuantForm, grid_for
from quantsearch.quant.kl import BINS, abs_histogram, kl_divergences, kl_threshold
from torch import nn

N, C, HW, BATCH = 4, 64, 28, 64


def _setup() -> dict:
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(C, C, 3, padding=1)
    x = torch.randn(BATCH, C, HW, HW, generator=g)
    a_form, w_form = QuantForm(4, "per_tensor", False), QuantForm(4, "per_channel", True)
    amax, wmax = float(x.abs().max()), conv.weight.detach().abs().amax((1, 2, 3))
    frac = torch.tensor([1.0, 0.8, 0.6, 0.45])
    return {"conv": conv, "x": x, "alpha": torch.zeros(N, requires_grad=True),
            "beta": torch.zeros(N, requires_grad=True),
            "a_scales": frac * 2 * amax / 15, "a_zps": torch.full((N,), 8.0),
            "w_scales": frac[:, None] * wmax[None, :] / 7, "a_range": grid_for(a_form, False),
            "w_range": grid_for(w_form, False)}


def _step(s: dict, efficient: bool) -> None:
    conv = s["conv"]
    x = s["x"].clone().requires_grad_(True)
    p, q = torch.softmax(s["alpha"], 0), torch.softmax(s["beta"], 0)
    if efficient:
        xm = mix_quant(x, p, s["a_scales"], s["a_zps"], *s["a_range"], per_channel=False)
        wm = mix_quant(conv.weight, q, s["w_scales"], None, *s["w_range"], per_channel=True)
        y = conv._conv_forward(xm, wm, conv.bias)
    else:
        y = naive_mixed_forward(conv, x, p, q, s["a_scales"], s["a_zps"], s["a_range"], s["w_scales"], None,
                                s["w_range"], True)
    y.sum().backward()


def _saved_bytes(s: dict, efficient: bool) -> int:
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[(st.data_ptr(), st.nbytes())] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _step(s, efficient)
    return sum(seen.values())


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _child(which: str) -> None:
    """Run in a fresh process: peak RSS growth of one forward+backward, printed as JSON."""
    torch.set_num_threads(2)
    s = _setup()
    small = {**s, "x": s["x"][:1]}
    _step(small, which == "efficient")  # lazy kernel/thread-pool initialisation outside the measurement
    # ru_maxrss survives exec (it would report the parent's peak): reset the high-water mark (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    _step(s, which == "efficient")
    print(json.dumps({"peak_growth": 1024 * (_status_kib("VmHWM") - before)}))


def _peak_growth(which: str) -> int:
    r = subprocess.run([sys.executable, __file__, "--child", which], capture_output=True, text=True, check=True,
                       cwd=ROOT)
    return int(json.loads(r.stdout.strip().splitlines()[-1])["peak_growth"])


def _kl_per_cut_torch(hist: torch.Tensor, levels: int) -> torch.Tensor:
    """The same KL as quant/kl.py, one cut at a time with torch ops inside (a common implementation)."""
    h = hist.double()
    out = []
    for i in range(levels, h.numel() + 1):
        p = h[:i].clone()
        p[i - 1] += h[i:].sum()
        group = torch.div(torch.arange(i) * levels, i, rounding_mode="floor").clamp_max(levels - 1)
        mass = torch.zeros(levels, dtype=h.dtype).scatter_add_(0, group, h[:i])
        count = torch.zeros(levels, dtype=h.dtype).scatter_add_(0, group, (h[:i] > 0).double())
        q = torch.where(h[:i] > 0, (mass / count.clamp_min(1))[group], 0.0)
        p, q = p / p.sum().clamp_min(1e-10), q / q.sum().clamp_min(1e-10)
        q = torch.where((p > 0) & (q <= 0), 1e-10, q)
        out.append(torch.where(p > 0, p * torch.log(p / q), 0.0).sum())
    return torch.stack(out)


def main() -> None:
    """Time and measure both layers, then the KL calibrators; write results/dqss_speed.json."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--child", choices=["efficient", "naive"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child)
        return
    torch.set_num_threads(2)
    s = _setup()
    t_eff = median_time(lambda: _step(s, True), args.repeats)
    t_naive = median_time(lambda: _step(s, False), max(3, args.repeats // 2))
    saved_eff, saved_naive = _saved_bytes(s, True), _saved_bytes(s, False)
    peak_eff, peak_naive = _peak_growth("efficient"), _peak_growth("naive")
    mib = 2**20
    layer = {
        "shape": {"batch": BATCH, "channels": C, "hw": HW, "kernel": 3, "strategies": N},
        "efficient_ms": 1e3 * t_eff, "naive_ms": 1e3 * t_naive, "speedup": t_naive / t_eff,
        "peak_rss_growth_mib": {"efficient": peak_eff / mib, "naive": peak_naive / mib},
        "peak_memory_ratio": peak_eff / peak_naive,
        "saved_for_backward_mib": {"efficient": saved_eff / mib, "naive": saved_naive / mib},
        "saved_memory_ratio": saved_eff / saved_naive,
        "target": ">= 8x faster, <= 1/4 peak memory",
        "target_met": {"speed": t_naive / t_eff >= 8, "memory": peak_eff / peak_naive <= 0.25},
    }
    print(f"mixed layer fwd+bwd: efficient {1e3 * t_eff:.1f} ms, naive N^2 {1e3 * t_naive:.1f} ms "
          f"({t_naive / t_eff:.1f}x); peak RSS growth {peak_eff / mib:.1f} vs {peak_naive / mib:.1f} MiB "
          f"({peak_eff / peak_naive:.3f}); saved for backward {saved_eff / mib:.1f} vs {saved_naive / mib:.1f} MiB")

    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    from test_calibrators import _reference_kl  # the reference loop the unit tests check kl.py against

    x = s["x"]
    kl_rows = {}
    for bits in (8, 4):
        levels = 2 ** (bits - 1)

        def vectorised(levels: int = levels) -> float:
            hist, amax = abs_histogram(x, BINS)
            return kl_threshold(hist, amax, levels)

        hist, amax = abs_histogram(x, BINS)
        t_vec = median_time(vectorised, 5, warmup=1)
        t_hist = median_time(lambda: abs_histogram(x, BINS), 5, warmup=1)  # every variant needs it
        t0 = time.perf_counter()
        ref = _reference_kl(hist, levels)
        t_ref = time.perf_counter() - t0 + t_hist
        t0 = time.perf_counter()
        per_cut = _kl_per_cut_torch(hist, levels)
        t_cut = time.perf_counter() - t0 + t_hist
        _, kl = kl_divergences(hist, levels)
        agree = bool(torch.allclose(kl, ref, rtol=1e-6, atol=1e-9) and torch.allclose(kl, per_cut, rtol=1e-6,
                                                                                      atol=1e-9))
        kl_rows[f"{bits}bit"] = {
            "levels": levels, "cuts": BINS - levels + 1, "threshold": vectorised(), "amax": amax,
            "histogram_s": t_hist, "vectorised_s": t_vec, "reference_loop_s": t_ref, "per_cut_torch_loop_s": t_cut,
            "speedup_vs_reference_loop": t_ref / t_vec, "speedup_vs_per_cut_torch_loop": t_cut / t_vec,
            "all_three_agree": agree, "target": ">= 20x vs the reference loop", "target_met": t_ref / t_vec >= 20}
        print(f"KL {bits}-bit on {x.numel():,} values: vectorised {t_vec:.3f} s, reference loop {t_ref:.1f} s "
              f"({t_ref / t_vec:.0f}x), per-cut torch loop {t_cut:.2f} s ({t_cut / t_vec:.1f}x); agree {agree}")
    write_result("dqss_speed", {"mixed_layer": layer, "kl_calibration": kl_rows,
                                "note": "KL loop times include the histogram, which every variant needs"})


if __name__ == "__main__":
    main()
