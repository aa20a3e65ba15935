"""EQ-Net supernet quality on Fashion-MNIST with the compact ResNet, against independent LSQ QAT and FP32.

usage: python benchmarks/eqnet_quality.py [--quick] [--epochs N] [--forms main|all] [--no-ablation | --ablation-only]

Trains the supernet (generic profile: bits 2..8, both granularities and symmetries) from the FP32 checkpoint and
measures uniform subnets W8A8/W4A4/W3A3/W2A2 (val and test, after BN recalibration):
- in the main form (per-channel symmetric weights, affine activations): the `table` against LSQ and FP32;
- with --forms all (the default in full mode): in EVERY network-wide form the profile allows (weights
  per-channel/per-tensor x symmetric/affine, activations symmetric/affine: 8 forms), recorded under `forms`
  (label -> W<b>A<b> -> val_acc, test_acc) and saved as runs/bench/eqnet-eqnet/table.{csv,parquet,png};
- the ablations without WDR and without GPG, each a fresh supernet, measured in the main form at every bits row:
  `ablation` (W<b>A<b> -> full / no_wdr / no_gpg test accuracy) and `ablation_val_acc` (the same on val).

Modes:
- full (default): all 55,000 training images, --epochs (default 4), --forms all, ablations included;
- --quick: 8,000 training images, 2 epochs, main form only (--forms all to measure every form anyway);
- --no-ablation: train and measure only the supernet (saves two trainings); the file then has no `ablation`;
- --ablation-only: train only the two ablations and merge them into the existing results file, whose supernet
  (same mode, epochs, training images and seed) supplies the `full` column.
Writes results/eqnet_quality.json (or eqnet_quality_quick.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from _common import RESULTS, RUNS, write_result
from quantsearch.config import JobSpec
from quantsearch.data import PreparedData, prepare_data
from quantsearch.space import load_model
from quantsearch.supernet import measure, save_table, train_supernet_local, uniform_table
from quantsearch.supernet.sampling import NetForm
from quantsearch.train import evaluate, load_checkpoint, train_fp32

CONFIGS = (8, 4, 3, 2)
FORM = NetForm("per_channel", True, False)
TARGET_ABS = {4: 0.915, 3: 0.905, 2: 0.86}
FORMS_LEGEND = "label = weights granularity (pc per-channel, pt per-tensor)-symmetry / activation symmetry"
ABLATIONS = (("no_wdr", {"wdr": False}), ("no_gpg", {"gpg": False}))


def _measure_forms(run: Any, spec: JobSpec, data: PreparedData, all_forms: bool,
                   out: Any) -> dict[str, dict[str, dict[str, float]]]:
    """label -> W<b>A<b> -> {val_acc, test_acc}; every profile form (uniform_table) or only FORM."""
    if all_forms:
        sn = spec.supernet.model_copy(update={"table_bits": list(CONFIGS), "table_forms": "all"})
        rows = uniform_table(run.model, run.space, data, sn)
        save_table(rows, out)
    else:
        rows = []
        for b in CONFIGS:
            cfg = run.space.uniform(b, b, FORM.granularity, FORM.w_symmetric, FORM.a_symmetric)
            m = measure(run.model, cfg, data, spec.supernet.bn_images, test=True)
            rows.append({"form": FORM.label(), "config": f"W{b}A{b}", "val_acc": m.val_acc, "test_acc": m.test_acc})
    forms: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        forms.setdefault(str(r["form"]), {})[str(r["config"])] = {"val_acc": r["val_acc"], "test_acc": r["test_acc"]}
    return forms


def _train(base: dict, name: str, data: PreparedData, all_forms: bool = False, **overrides: Any) -> dict:
    sn = {**base["supernet"], **overrides}
    spec = JobSpec.model_validate({**base, "supernet": sn})
    out = RUNS / f"eqnet-{name}"
    ckpt = out / "supernet.pt"
    if ckpt.exists():
        ckpt.unlink()  # a benchmark measures a fresh run
    t0 = time.perf_counter()
    run = train_supernet_local(spec, data, out, progress=False)
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    forms = _measure_forms(run, spec, data, all_forms, out)
    measure_seconds = time.perf_counter() - t0
    rows = forms[FORM.label()]
    for label, cells in forms.items():
        print(f"{name:8s} {label:12s} " + "  ".join(f"{k} {100 * v['test_acc']:.2f}%" for k, v in cells.items()))
    print(f"{name:8s} trained in {seconds:.0f}s, measured in {measure_seconds:.0f}s")
    return {"configs": rows, "forms": forms, "seconds": round(seconds, 1),
            "measure_seconds": round(measure_seconds, 1), "history": run.history}


def _ablation(full: dict[str, dict[str, float]], runs: dict[str, dict], key: str) -> dict[str, dict[str, float]]:
    """W<b>A<b> -> {full, no_wdr, no_gpg} for `key` (test_acc or val_acc), every bits row."""
    out = {}
    for b in CONFIGS:
        cfg = f"W{b}A{b}"
        out[cfg] = {"full": full[cfg][key], **{n: r["configs"][cfg][key] for n, r in runs.items()}}
    return out


def _ablation_only(args: argparse.Namespace, base: dict, data: PreparedData, name: str, sn: dict) -> None:
    """Train the ablations and merge them into the existing results file (its supernet is the `full` column)."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        sys.exit(f"--ablation-only: {path} is missing; run the supernet first (e.g. with --no-ablation)")
    old = json.loads(path.read_text())
    want = {"epochs": sn["epochs"], "train_images": sn.get("train_images", len(data.train)), "seed": args.seed}
    have = {"epochs": old.get("epochs"), "train_images": old.get("train_images"), "seed": old.get("seed", 0)}
    if want != have:
        sys.exit(f"--ablation-only: {path.name} was measured with {have}, this run would use {want}")
    main_form = old.get("forms", {}).get(FORM.label(), {})
    full = {cfg: {"test_acc": row["supernet_test_acc"],
                  "val_acc": row.get("supernet_val_acc", main_form.get(cfg, {}).get("val_acc"))}
            for cfg, row in old["table"].items()}
    runs = {n: _train(base, n.replace("_", "-"), data, **ov) for n, ov in ABLATIONS}
    kept = {k: v for k, v in old.items() if k not in ("benchmark", "command", "machine", "date")}
    kept.setdefault("supernet_command", old["command"])
    kept.setdefault("supernet_date", old["date"])
    kept["ablation"] = _ablation(full, runs, "test_acc")
    kept["ablation_val_acc"] = _ablation(full, runs, "val_acc")
    kept["wall_seconds"] = {**old.get("wall_seconds", {}), **{n: r["seconds"] for n, r in runs.items()}}
    kept["measure_seconds"] = {**old.get("measure_seconds", {}),
                               **{n: r["measure_seconds"] for n, r in runs.items()}}
    write_result(name, kept)


def main() -> None:
    """Train the supernet (+ ablations), measure, compare with LSQ and FP32, write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8,000 training images, 2 epochs, main form only")
    ap.add_argument("--epochs", type=int, default=None, help="default 2 (--quick) or 4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--forms", choices=("main", "all"), default=None,
                    help="measure the supernet's uniform table in the main form only or in every form the profile "
                         "allows (default: all in full mode, main with --quick)")
    abl = ap.add_mutually_exclusive_group()
    abl.add_argument("--no-ablation", action="store_true", help="skip the no-WDR / no-GPG trainings")
    abl.add_argument("--ablation-only", action="store_true",
                     help="train only the ablations; merge them into the existing results file")
    args = ap.parse_args()
    epochs = args.epochs or (2 if args.quick else 4)
    all_forms = (args.forms or ("main" if args.quick else "all")) == "all"
    name = "eqnet_quality_quick" if args.quick else "eqnet_quality"
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
    if args.ablation_only:
        _ablation_only(args, base, data, name, sn)
        return
    fp32_acc = evaluate(load_model(load_checkpoint(ckpt)), data.test, data.mean, data.std).top1
    print(f"FP32 test {100 * fp32_acc:.2f}%; supernet {epochs} epochs on "
          f"{sn.get('train_images', len(data.train))} images")
    main_run = _train(base, "eqnet", data, all_forms=all_forms)
    runs = {} if args.no_ablation else {n: _train(base, n.replace("_", "-"), data, **ov) for n, ov in ABLATIONS}
    lsq_path = RESULTS / "lsq_baseline.json"
    lsq = json.loads(lsq_path.read_text()) if lsq_path.exists() else None
    table, targets = {}, {}
    for b in CONFIGS:
        key = f"W{b}A{b}"
        sup = main_run["configs"][key]["test_acc"]
        ind = lsq["configs"].get(key, {}).get("test_acc") if lsq else None
        table[key] = {"supernet_test_acc": sup, "supernet_val_acc": main_run["configs"][key]["val_acc"],
                      "independent_lsq_test_acc": ind, "fp32_test_acc": fp32_acc}
        if ind is not None:
            tol = 0.005 if b >= 4 else 0.015
            targets[f"{key}_vs_lsq_within_{100 * tol:.1f}pts"] = sup >= ind - tol
        if b in TARGET_ABS:
            targets[f"{key}_abs_>={100 * TARGET_ABS[b]:.1f}%"] = sup >= TARGET_ABS[b]
    for k, v in table.items():
        ind = v["independent_lsq_test_acc"]
        print(f"{k}: supernet {100 * v['supernet_test_acc']:.2f}%  LSQ "
              f"{'-' if ind is None else f'{100 * ind:.2f}%'}  FP32 {100 * fp32_acc:.2f}%")
    print("targets:", json.dumps(targets))
    payload: dict[str, Any] = {
        "mode": "quick" if args.quick else "full", "epochs": epochs, "seed": args.seed,
        "train_images": sn.get("train_images", len(data.train)), "bn_images": sn["bn_images"],
        "form": "weights per-channel symmetric, activations per-tensor affine", "main_form": FORM.label(),
        "fp32_test_acc": fp32_acc, "table": table,
        "forms": main_run["forms"], "forms_legend": FORMS_LEGEND,
        "lsq_epochs_per_config": lsq["epochs_per_config"] if lsq else None,
        "wall_seconds": {"eqnet": main_run["seconds"], **{n: r["seconds"] for n, r in runs.items()}},
        "measure_seconds": {"eqnet": main_run["measure_seconds"],
                            **{n: r["measure_seconds"] for n, r in runs.items()}},
        "targets": targets, "history": main_run["history"],
    }
    if runs:
        payload["ablation"] = _ablation(main_run["configs"], runs, "test_acc")
        payload["ablation_val_acc"] = _ablation(main_run["configs"], runs, "val_acc")
    write_result(name, payload)


if __name__ == "__main__":
    main()
