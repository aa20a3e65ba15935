"""Independent LSQ QAT of the compact ResNet at W8A8, W4A4, W3A3, W2A2 from the FP32 checkpoint.

usage: python benchmarks/lsq_baseline.py [--epochs 2] [--configs W8A8 W4A4 W3A3 W2A2]
Needs runs/bench/fp32-resnet8/model.pt (benchmarks/fp32_baseline.py); trains it first if missing.
Weights per-channel symmetric, activations per-tensor affine. Target: W8A8 and W4A4 within 0.5 points of FP32.
"""

from __future__ import annotations

import argparse

from _common import RUNS, write_result
from quantsearch.config import JobSpec
from quantsearch.data import prepare_data
from quantsearch.space import load_model
from quantsearch.train import evaluate, load_checkpoint, train_fp32, train_qat


def main() -> None:
    """Train each config for the same number of epochs and record accuracies."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--configs", nargs="+", default=["W8A8", "W4A4", "W3A3", "W2A2"])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--scale-lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ckpt_path = RUNS / "fp32-resnet8" / "model.pt"
    base = JobSpec.model_validate({"seed": args.seed, "model": {"name": "resnet8"}, "output_dir": str(RUNS)})
    data = prepare_data(base.data)
    if not ckpt_path.exists():
        train_fp32(base, data, ckpt_path.parent, progress=False)
    fp32_acc = evaluate(load_model(load_checkpoint(ckpt_path)), data.test, data.mean, data.std).top1
    print(f"FP32 test {100 * fp32_acc:.2f}%")
    rows = {}
    for cfg in args.configs:
        spec = JobSpec.model_validate({**base.model_dump(), "qat": {
            "target": {"config": f"uniform:{cfg}"}, "epochs": args.epochs, "lr": args.lr, "scale_lr": args.scale_lr,
            "checkpoint": str(ckpt_path)}})
        res = train_qat(spec, data, RUNS / f"lsq-{cfg}", progress=False)
        gap = 100 * (fp32_acc - res.test_acc)
        rows[cfg] = {"test_acc": res.test_acc, "val_acc": res.val_acc, "calibrated_val_acc": res.ptq_val_acc,
                     "gap_to_fp32_points": gap, "seconds": round(res.seconds, 1)}
        print(f"{cfg}: calibrated val {100 * res.ptq_val_acc:.2f}%  LSQ test {100 * res.test_acc:.2f}%  "
              f"(FP32 - {gap:.2f} pts)  {res.seconds:.0f}s")
    targets = {c: rows[c]["gap_to_fp32_points"] <= 0.5 for c in ("W8A8", "W4A4") if c in rows}
    write_result("lsq_baseline", {
        "model": "resnet8", "dataset": "fashion-mnist", "fp32_test_acc": fp32_acc, "epochs_per_config": args.epochs,
        "weights": "per-channel symmetric", "activations": "per-tensor affine", "lr": args.lr,
        "scale_lr": args.scale_lr, "configs": rows, "target": "W8A8 and W4A4 within 0.5 points of FP32",
        "target_met": targets,
    })


if __name__ == "__main__":
    main()
