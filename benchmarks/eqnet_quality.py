"""EQ-Net supernet quality on Fashion-MNIST with the compact ResNet, against independent LSQ QAT and FP32.

usage: python benchmarks/eqnet_quality.py [--quick] [--epochs N]
Trains the supernet (generic profile: bits 2..8, both granularities and symmetries) from the FP32
checkpoint, plus the ablations without WDR and without GPG; measures uniform subnets W8A8/W4A4/W3A3/W2A2
(per-channel symmetric weights, affine activations) on the test split after BN recalibration.
Writes results/eqnet_quality.json (or eqnet_quality_quick.json). --quick: 8,000 training images, under 10 min.
"""

from __future__ import annotations

import argparse
import json
import time

from _common import RESULTS, RUNS, write_result
from quantsearch.config import JobSpec
from quantsearch.data import prepare_data
from quantsearch.supernet import measure, train_supernet_local
from quantsearch.supernet.sampling import NetForm
from quantsearch.train import evaluate, load_checkpoint, load_model, train_fp32

CONFIGS = (8, 4, 3, 2)
FORM = NetForm("per_channel", True, False)
TARGET_ABS = {4: 0.915, 3: 0.905, 2: 0.86}


def _train(base: dict, name: str, data, **overrides) -> dict:
    sn = {**base["supernet"], **overrides}
    spec = JobSpec.model_validate({**base, "supernet": sn})
    out = RUNS / f"eqnet-{name}"
    ckpt = out / "supernet.pt"
    if ckpt.exists():
        ckpt.unlink()  # a benchmark measures a fresh run
    t0 = time.perf_counter()
    run = train_supernet_local(spec, data, out, progress=False)
    seconds = time.perf_counter() - t0
    rows = {}
    for b in CONFIGS:
        cfg = run.space.uniform(b, b, FORM.granularity, FORM.w_symmetric, FORM.a_symmetric)
        m = measure(run.model, cfg, data, spec.supernet.bn_images, test=True)
        rows[f"W{b}A{b}"] = {"test_acc": m.test_acc, "val_acc": m.val_acc}
    print(f"{name:8s} " + "  ".join(f"{k} {100 * v['test_acc']:.2f}%" for k, v in rows.items()) + f"  ({seconds:.0f}s)")
    return {"configs": rows, "seconds": round(seconds, 1), "history": run.history}


def main() -> None:
    """Train main + ablations, compare, write JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    epochs = args.epochs or (2 if args.quick else 4)
    ckpt = RUNS / "fp32-resnet8" / "model.pt"
    sn = {"profile": "generic", "epochs": epochs, "n_random": 2, "bn_images": 2048, "table_bits": list(CONFIGS)}
    if args.quick:
        sn["train_images"] = 8000
    base = {"name": "eqnet-bench", "seed": args.seed, "output_dir": str(RUNS), "model": {"name": "resnet8"},
            "supernet": {**sn, "checkpoint": str(ckpt)}}
    spec = JobSpec.model_validate(base)
    data = prepare_data(spec.data)
    if not ckpt.exists():
        train_fp32(spec, data, ckpt.parent, progress=False)
    fp32_acc = evaluate(load_model(load_checkpoint(ckpt)), data.test, data.mean, data.std).top1
    print(f"FP32 test {100 * fp32_acc:.2f}%; supernet {epochs} epochs on "
          f"{sn.get('train_images', len(data.train))} images")
    main_run = _train(base, "eqnet", data)
    no_wdr = _train(base, "no-wdr", data, wdr=False)
    no_gpg = _train(base, "no-gpg", data, gpg=False)
    lsq_path = RESULTS / "lsq_baseline.json"
    lsq = json.loads(lsq_path.read_text()) if lsq_path.exists() else None
    table, targets = {}, {}
    for b in CONFIGS:
        key = f"W{b}A{b}"
        sup = main_run["configs"][key]["test_acc"]
        ind = lsq["configs"].get(key, {}).get("test_acc") if lsq else None
        table[key] = {"supernet_test_acc": sup, "independent_lsq_test_acc": ind, "fp32_test_acc": fp32_acc}
        if ind is not None:
            tol = 0.005 if b >= 4 else 0.015
            targets[f"{key}_vs_lsq_within_{100 * tol:.1f}pts"] = sup >= ind - tol
        if b in TARGET_ABS:
            targets[f"{key}_abs_>={100 * TARGET_ABS[b]:.1f}%"] = sup >= TARGET_ABS[b]
    ablation = {k: {"full": main_run["configs"][k]["test_acc"], "no_wdr": no_wdr["configs"][k]["test_acc"],
                    "no_gpg": no_gpg["configs"][k]["test_acc"]} for k in ("W3A3", "W2A2")}
    for k, v in table.items():
        ind = v["independent_lsq_test_acc"]
        print(f"{k}: supernet {100 * v['supernet_test_acc']:.2f}%  LSQ "
              f"{'-' if ind is None else f'{100 * ind:.2f}%'}  FP32 {100 * fp32_acc:.2f}%")
    print("targets:", json.dumps(targets))
    write_result("eqnet_quality_quick" if args.quick else "eqnet_quality", {
        "mode": "quick" if args.quick else "full", "epochs": epochs,
        "train_images": sn.get("train_images", len(data.train)), "form": "weights per-channel symmetric, "
        "activations per-tensor affine", "fp32_test_acc": fp32_acc, "table": table, "ablation": ablation,
        "lsq_epochs_per_config": lsq["epochs_per_config"] if lsq else None,
        "wall_seconds": {"eqnet": main_run["seconds"], "no_wdr": no_wdr["seconds"], "no_gpg": no_gpg["seconds"]},
        "targets": targets, "history": main_run["history"],
    })


if __name__ == "__main__":
    main()
