"""Train the reference models in FP32 on Fashion-MNIST; write results/fp32_baseline.json.

usage: python benchmarks/fp32_baseline.py [--epochs 4] [--models resnet8 mobilenetv2-tiny]
Checkpoints land in runs/bench/fp32-<model>/model.pt; the quantization benchmarks start from them.
"""

from __future__ import annotations

import argparse

from _common import RUNS, write_result
from quantsearch.config import JobSpec
from quantsearch.data import prepare_data
from quantsearch.train import train_fp32


def main() -> None:
    """Train each model and record test accuracy, params, epochs, seconds."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--models", nargs="+", default=["resnet8", "mobilenetv2-tiny"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    results = {}
    for name in args.models:
        spec = JobSpec.model_validate({"seed": args.seed, "model": {"name": name},
                                       "training": {"epochs": args.epochs}})
        data = prepare_data(spec.data)
        res = train_fp32(spec, data, RUNS / f"fp32-{name}", resume=False, progress=False)
        results[name] = {"test_acc": res.test_acc, "val_acc": res.val_acc, "params": res.params,
                         "epochs": res.epochs, "seconds": round(res.seconds, 1)}
        print(f"{name:18s} test {100 * res.test_acc:.2f}%  params {res.params}  {res.epochs} ep  {res.seconds:.0f}s")
    write_result("fp32_baseline", {"target": "resnet8 >= 91% test accuracy after 4 epochs", "models": results,
                                   "training": JobSpec().training.model_dump()})


if __name__ == "__main__":
    main()
