"""Export on Fashion-MNIST: ONNX QDQ at W8A8/W4A4/W3A3/W2A2 (+ a searched mixed config) checked in onnxruntime,
and W8A8 speed and accuracy next to the FP32 ONNX model and onnxruntime's own `quantize_static`.

usage: python benchmarks/export.py [--quick] [--models resnet8 mobilenetv2-tiny]

For each compact model (FP32 checkpoint from runs/bench/fp32-<model>/, trained first if missing):
- PTQ models (first/last layer 8-bit; weights per-channel symmetric, activations per-tensor affine, MSE clip
  calibration on the same 1,024 training images for every row) at each uniform W<b>A<b>, exported by
  `quantsearch.export` and run in onnxruntime on the whole test split beside the PyTorch fake-quant model:
  top-1 of both (target: <= 0.1 points apart), max |logit difference|, integer vs float kernels in ORT's
  optimized graph (W8A8 layers get output quantization points calibrated on those 1,024 training images, so
  onnxruntime can run every Conv/Gemm as an integer kernel);
- resnet8 only, when the supernet of benchmarks/cqap_search.py exists (runs/bench/cqap-quick/supernet.pt): its
  uniform subnets and the searched mixed config recorded in results/cqap_search_quick.json (W3A3 budget), BN
  recalibrated as the search measured them, exported and checked the same way;
- W8A8 throughput at batch 256 with 2 onnxruntime threads: our export vs the FP32 ONNX model vs
  `onnxruntime.quantization.quantize_static` (QDQ, per-channel int8 weights, uint8 activations, MinMax, the same
  1,024 calibration images); targets: ours >= 1.3x FP32 and >= quantize_static; and the test top-1 of ours vs
  quantize_static's (target: ours >= theirs).
--quick: 2,000 test images, resnet8 only, fewer timing repeats; writes results/export_quick.json.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from _common import RESULTS, RUNS, median_time, write_result
from quantsearch.config import DataSpec, JobSpec, QuantTarget
from quantsearch.data import ArrayBatches, prepare_data, take
from quantsearch.export import export_onnx
from quantsearch.export.check import float_kernels, integer_kernels, kernel_counts, session
from quantsearch.export.job import load_source
from quantsearch.export.trace import INPUT_NAME
from quantsearch.quant import calibrate
from quantsearch.quant.forms import LayerConfig, QuantForm
from quantsearch.space import SubnetConfig, load_model, quantized_model, resolve_config, set_config
from quantsearch.train import load_checkpoint, train_fp32

BITS = (8, 4, 3, 2)
CALIB_IMAGES = 1024
BATCH = 256
THREADS = 2
SHORT = re.compile(r"W(\d)\((pc|pt)/(sym|asym)\) A(\d)\((sym|asym)\)")


def _fp32(model: str, seed: int) -> Path:
    path = RUNS / f"fp32-{model}" / "model.pt"
    if not path.exists():
        spec = JobSpec.model_validate({"seed": seed, "model": {"name": model}, "output_dir": str(RUNS)})
        train_fp32(spec, prepare_data(spec.data), path.parent, progress=False)
    return path


def _check(qmodel: torch.nn.Module, example: torch.Tensor, path: Path, test: ArrayBatches, calibration: Any,
           calib: ArrayBatches) -> dict[str, Any]:
    res = export_onnx(qmodel, example, path, check_batches=test, calib_batches=calib, calibration=calibration,
                      threads=THREADS)
    gap = abs(res.ort_top1 - res.torch_top1) if res.ort_top1 is not None and res.torch_top1 is not None else None
    return {"torch_top1": res.torch_top1, "ort_top1": res.ort_top1, "gap_points": gap,
            "max_abs_logit_diff": res.max_abs_logit_diff, "p99_abs_logit_diff": res.p99_abs_logit_diff,
            "top1_agreement": res.top1_agreement,
            "integer_kernels": res.integer_kernels, "float_kernels": res.float_kernels, "n_qdq": res.n_qdq,
            "samples": res.samples, "export_seconds": round(res.seconds, 1),
            "target_met": {"within_0.1_points": gap is not None and gap <= 0.1}}


def _ptq(ckpt: dict[str, Any], example: torch.Tensor, bits: int, calib: ArrayBatches) -> torch.nn.Module:
    model = quantized_model(ckpt, example)
    set_config(model, resolve_config(QuantTarget(config=f"uniform:W{bits}A{bits}"), model))
    calibrate(model, calib, "mse")
    return model.eval()


def _images_per_second(path: Path, x: np.ndarray, repeats: int) -> float:
    sess = session(path, threads=THREADS)
    t = median_time(lambda: sess.run(None, {INPUT_NAME: x}), repeats, warmup=2)  # type: ignore[attr-defined]
    return len(x) / t


def _ort_top1(path: Path, test: ArrayBatches) -> float:
    sess = session(path, threads=THREADS)
    correct = n = 0
    for x, y in test:
        out = np.asarray(sess.run(None, {INPUT_NAME: x.numpy()})[0])  # type: ignore[attr-defined]
        correct += int((out.argmax(1) == y.numpy()).sum())
        n += len(y)
    return 100.0 * correct / n


def _optimized_counts(path: Path) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as scratch:
        opt = Path(scratch) / "opt.onnx"
        session(path, opt, THREADS)
        counts = kernel_counts(onnx.load(str(opt)))
    return {"integer_kernels": integer_kernels(counts), "float_kernels": float_kernels(counts),
            "ops": {k: v for k, v in counts.items() if "Conv" in k or "Gemm" in k or "MatMul" in k
                    or k in ("QuantizeLinear", "DequantizeLinear")}}


def _quantize_static(fp32_onnx: Path, out: Path, calib: ArrayBatches) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.it = iter([{INPUT_NAME: x.numpy()} for x, _ in calib])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_onnx), str(pre))
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def speed_and_peer(model_name: str, ckpt: dict[str, Any], ours_w8: Path, example: torch.Tensor,
                   calib: ArrayBatches, test: ArrayBatches, folder: Path, repeats: int) -> dict[str, Any]:
    """FP32 ONNX, ORT quantize_static and our W8A8 export: throughput at batch 256 (2 threads) and test top-1."""
    fp32_onnx = folder / f"{model_name}-fp32.onnx"
    torch.onnx.export(load_model(ckpt).eval(), (example,), fp32_onnx, dynamo=False, opset_version=17,
                      input_names=[INPUT_NAME], output_names=["logits"],
                      dynamic_axes={INPUT_NAME: {0: "batch"}, "logits": {0: "batch"}})
    theirs = folder / f"{model_name}-ort_quantize_static.onnx"
    t0 = time.perf_counter()
    _quantize_static(fp32_onnx, theirs, calib)
    qs_seconds = time.perf_counter() - t0
    x = np.concatenate([b[0].numpy() for b in test])[:BATCH]
    rows = {}
    for name, path in (("fp32", fp32_onnx), ("ort_quantize_static_w8a8", theirs), ("ours_w8a8", ours_w8)):
        rows[name] = {"images_per_second": _images_per_second(path, x, repeats), "test_top1": _ort_top1(path, test),
                      **_optimized_counts(path)}
        print(f"[{model_name}] {name}: {rows[name]['images_per_second']:.0f} img/s, top-1 {rows[name]['test_top1']:.2f}"
              f", integer kernels {rows[name]['integer_kernels']}, float {rows[name]['float_kernels']}")
    ours, fp, peer = rows["ours_w8a8"], rows["fp32"], rows["ort_quantize_static_w8a8"]
    return {"batch": BATCH, "ort_threads": THREADS, "timing": f"median of {repeats} runs after 2 warm-up runs",
            "calib_images": CALIB_IMAGES, "quantize_static_seconds": round(qs_seconds, 1),
            "quantize_static_settings": "QDQ, per_channel, weights QInt8, activations QUInt8, MinMax, "
                                        "quant_pre_process first", **rows,
            "speedup_ours_vs_fp32": ours["images_per_second"] / fp["images_per_second"],
            "speedup_ours_vs_quantize_static": ours["images_per_second"] / peer["images_per_second"],
            "speedup_quantize_static_vs_fp32": peer["images_per_second"] / fp["images_per_second"],
            "target_met": {"ours>=1.3x_fp32": ours["images_per_second"] >= 1.3 * fp["images_per_second"],
                           "ours>=quantize_static_speed": ours["images_per_second"] >= peer["images_per_second"],
                           "ours>=quantize_static_top1": ours["test_top1"] >= peer["test_top1"]}}


def _layer(text: str) -> LayerConfig:
    m = SHORT.fullmatch(text)
    if m is None:
        raise ValueError(f"cannot read layer form {text!r}")
    wb, gran, wsym, ab, asym = m.groups()
    return LayerConfig(QuantForm(int(wb), "per_channel" if gran == "pc" else "per_tensor", wsym == "sym"),
                       QuantForm(int(ab), "per_tensor", asym == "sym"))


def supernet_rows(data: Any, example: torch.Tensor, test: ArrayBatches, calib: ArrayBatches, folder: Path
                  ) -> dict[str, Any]:
    """resnet8's quick-mode supernet: uniform subnets and the searched W3A3-budget config, exported and checked."""
    sn = RUNS / "cqap-quick" / "supernet.pt"
    record = RESULTS / "cqap_search_quick.json"
    if not sn.is_file() or not record.is_file():
        return {"skipped": f"needs {sn} and {record} (run benchmarks/cqap_search.py --quick)"}
    rec = json.loads(record.read_text())
    settings = rec["settings"]
    searched = rec["budgets"]["W3A3"]["searched"]
    mixed = SubnetConfig(tuple((n, _layer(t)) for n, t in searched["layers"].items()))
    mixed_path = folder / "searched_W3A3_budget.json"
    mixed_path.write_text(mixed.to_json())
    out: dict[str, Any] = {"supernet": str(sn), "bn_images": settings["bn_images"], "seed": settings["seed"],
                           "searched_summary": searched["summary"],
                           "searched_measured_test_acc_in_record": searched["test_acc"]}
    for label, subnet in [*[(f"W{b}A{b}", f"W{b}A{b}") for b in BITS], ("searched_W3A3_budget", str(mixed_path))]:
        src = load_source(sn, subnet=subnet, data=data, bn_images=settings["bn_images"], seed=settings["seed"])
        out[label] = _check(src.model, example, folder / f"supernet-{label}.onnx", test, src.calibration, calib)
        print(f"[resnet8 supernet] {label}: torch {out[label]['torch_top1']:.2f}  ort {out[label]['ort_top1']:.2f}  "
              f"max|dlogit| {out[label]['max_abs_logit_diff']:.1e}")
    return out


def main() -> None:
    """Run the grid and write results/export[_quick].json."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    models = args.models or (["resnet8"] if args.quick else ["resnet8", "mobilenetv2-tiny"])
    repeats = 5 if args.quick else 15
    torch.set_num_threads(THREADS)
    data = prepare_data(DataSpec(name="fashion-mnist", test_limit=2000 if args.quick else None))
    test = ArrayBatches(data.test, BATCH, data.mean, data.std)
    calib = ArrayBatches(take(data.train, CALIB_IMAGES, args.seed + 1), 256, data.mean, data.std)
    example = data.example(args.seed)
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name in models:
            ckpt = load_checkpoint(_fp32(name, args.seed), kind="fp32")
            rows: dict[str, Any] = {}
            for bits in BITS:
                q = _ptq(ckpt, example, bits, calib)
                rows[f"W{bits}A{bits}"] = _check(q, example, folder / f"{name}-W{bits}A{bits}.onnx", test, "mse",
                                                 calib)
                r = rows[f"W{bits}A{bits}"]
                print(f"[{name}] PTQ W{bits}A{bits}: torch {r['torch_top1']:.2f}  ort {r['ort_top1']:.2f}  "
                      f"max|dlogit| {r['max_abs_logit_diff']:.1e}  integer kernels {r['integer_kernels']}")
            results[name] = {"ptq_mse": rows,
                             "w8a8_speed_and_peer": speed_and_peer(name, ckpt, folder / f"{name}-W8A8.onnx", example,
                                                                   calib, test, folder, repeats)}
            if name == "resnet8":
                results[name]["supernet"] = supernet_rows(data, example, test, calib, folder)
    checked = [r for m in results.values() for block in (m["ptq_mse"], m.get("supernet", {}))
               for r in block.values() if isinstance(r, dict) and "gap_points" in r]
    write_result("export_quick" if args.quick else "export", {
        "dataset": "fashion-mnist", "split": "test", "test_images": len(data.test), "calib_images": CALIB_IMAGES,
        "ptq": "first/last layer 8-bit, weights per-channel symmetric, activations per-tensor affine, MSE clip",
        "opset": 21, "models": results, "seconds": round(time.perf_counter() - t0, 1),
        "targets": {"every export within 0.1 top-1 points of PyTorch": all(r["target_met"]["within_0.1_points"]
                                                                          for r in checked),
                    **{f"{m}:{k}": v for m, r in results.items()
                       for k, v in r["w8a8_speed_and_peer"]["target_met"].items()}},
    })


if __name__ == "__main__":
    main()
