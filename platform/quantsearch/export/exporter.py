"""export_onnx: a converted model with an active config -> ONNX QDQ, checked in onnxruntime, with a model card.

The steps: round the zero points (a copy: the reference), read each layer's integers and scales, trace the float
graph (torch.onnx.export, TorchScript, quantizers off), fold BatchNorm into the convs, insert QDQ (INT4/UINT4 for
grids of 2..4 bits at opset 21, INT8/UINT8 otherwise, a float Clip first where a grid is narrower than its type),
quantize the outputs of W8A8 convs that feed a residual Add or several readers (`requant`, scales from the
calibration batches) so that onnxruntime runs them as integer kernels, check the graph (onnx.checker, full), write
it under a temp name, run it in onnxruntime on the check batches beside the reference, and only if top-1 and logits
agree write the card and rename the model to its final name.

Below W8A8 the graph computes what the PyTorch fake-quant model computes: the same integers, scales and zero
points, so onnxruntime's logits differ only by float summation order and by activations that sit exactly on a
rounding tie (measured: max |diff| ~1e-5 on resnet8 / mobilenetv2-tiny at 2..4 bits; deep residual nets amplify a
single tie, e.g. 0.08 on an untrained torchvision resnet18 at W4A4). W8A8 layers run as integer kernels where
onnxruntime fuses them (see `qdq`), which round their own way: close, not bit-equal; with calibration batches
every W8A8 Conv/Gemm fuses (measured: resnet8 10/10 and mobilenetv2-tiny 23/23 integer kernels, 4/10 and 14/23
without), at the price of output quantization points the PyTorch reference does not have.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from quantsearch import __version__
from quantsearch.data.loader import Batch
from quantsearch.errors import ConfigError, QuantsearchError
from quantsearch.export import card as cards
from quantsearch.export.check import CheckReport, compare, float_kernels, integer_kernels, kernel_counts, session
from quantsearch.export.deployable import check_profile
from quantsearch.export.fold import fold_batchnorm
from quantsearch.export.graph import prune
from quantsearch.export.qdq import LayerGraph, insert_qdq
from quantsearch.export.requant import OutputPoint, OutputSite, integer_outputs, output_sites
from quantsearch.export.specs import LayerExport, layer_exports, round_model_offsets
from quantsearch.export.trace import INPUT_NAME, OUTPUT_NAME, trace_float
from quantsearch.quant.convert import quant_layers
from quantsearch.space.cost import LayerCost, layer_costs, subnet_cost
from quantsearch.space.subnet import get_config

MIN_OPSET = 13  # per-channel DequantizeLinear (axis)
RESULT_FORMAT = "quantsearch-export/1"

Calibration = str | tuple[str, str] | Mapping[str, tuple[str, str]] | Mapping[str, Any]


class ExportCheckError(QuantsearchError):
    """onnxruntime's output disagrees with the PyTorch fake-quant model: nothing is written under the final name."""


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and measured (top-1 in percent on the check batches; None without labels)."""

    path: Path
    card_md: Path
    card_json: Path
    torch_top1: float | None
    ort_top1: float | None
    max_abs_logit_diff: float
    n_qdq: int
    integer_kernels: int
    float_kernels: int
    samples: int
    top1_agreement: float
    offsets_rounded: int
    opset: int
    seconds: float
    p99_abs_logit_diff: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        d = asdict(self)
        for k in ("path", "card_md", "card_json"):
            d[k] = str(d[k])
        return {"format": RESULT_FORMAT, **d}

    def to_json(self) -> str:
        """JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExportResult:
        """Inverse of to_dict."""
        if d.get("format") != RESULT_FORMAT:
            raise ConfigError(f"not an export result ({RESULT_FORMAT})")
        kw = {k: v for k, v in d.items() if k != "format"}
        for k in ("path", "card_md", "card_json"):
            kw[k] = Path(kw[k])
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str) -> ExportResult:
        """Parse JSON text."""
        return cls.from_dict(json.loads(text))


def _methods(calibration: Calibration | None, layers: list[str]) -> dict[str, tuple[str, str]] | None:
    """Per layer (activation method, weight method): one name, one pair, a mapping, or a DQSS Strategy."""
    if calibration is None:
        return None
    choices = getattr(calibration, "choices", None)
    if callable(choices):  # a DQSS Strategy
        return {k: (str(v[0]), str(v[1])) for k, v in choices().items()}
    if isinstance(calibration, str):
        return dict.fromkeys(layers, (calibration, calibration))
    if isinstance(calibration, tuple):
        return dict.fromkeys(layers, (str(calibration[0]), str(calibration[1])))
    return {k: (str(v[0]), str(v[1])) for k, v in calibration.items()}


def _run_check(model_path: Path, ref: nn.Module, batches: Iterable[Batch], threads: int, final: Path
               ) -> tuple[CheckReport, Counter[str]]:
    """Load the written model in onnxruntime (saving its optimized graph), run the batches beside the reference."""
    with tempfile.TemporaryDirectory() as scratch:
        optimized = Path(scratch) / "optimized.onnx"
        try:
            sess = session(model_path, optimized, threads)
            counts = kernel_counts(onnx.load(str(optimized)))
        except Exception as exc:  # onnxruntime's own error types: one line, nothing kept
            raise ExportCheckError(f"onnxruntime cannot load the exported model ({str(exc).splitlines()[0]}); "
                                   f"nothing written to {final}") from exc
    try:
        return compare(ref, sess, batches, INPUT_NAME), counts
    except ValueError as exc:
        raise ConfigError(f"cannot check the export: {exc}; nothing written to {final}") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("onnxruntime"):
            raise ExportCheckError(f"onnxruntime cannot run the exported model ({str(exc).splitlines()[0]}); "
                                   f"nothing written to {final}") from exc
        raise


def _verify(report: CheckReport, top1_tol: float, logit_tol: float, path: Path) -> None:
    limit = logit_tol * max(1.0, report.max_abs_logit)
    problems = []
    if report.torch_top1 is not None and report.ort_top1 is not None \
            and abs(report.torch_top1 - report.ort_top1) > top1_tol:
        problems.append(f"top-1 {report.ort_top1:.2f} % in onnxruntime vs {report.torch_top1:.2f} % in PyTorch "
                        f"(limit {top1_tol} points)")
    if not report.p99_abs_logit_diff <= limit:  # a percentile: one rounding tie flipped at 2 bits moves one image
        problems.append(f"99th-percentile |logit difference| {report.p99_abs_logit_diff:.4g} (limit {limit:.4g}; "
                        f"max {report.max_abs_logit_diff:.4g})")
    if problems:
        raise ExportCheckError(f"the exported model disagrees with the PyTorch fake-quant model on "
                               f"{report.samples} images: {'; '.join(problems)}; nothing written to {path}")


def _requantize(proto: onnx.ModelProto, specs: list[LayerExport], placed: list[LayerGraph],
                calib_batches: Iterable[Batch] | None, symmetric: bool, threads: int, final: Path
                ) -> tuple[list[OutputPoint], list[OutputSite], int]:
    """Output quantization points for the W8A8 layers that need them (see `requant`), calibrated on the
    calibration batches; (placed points, sites left float for want of calibration data, calibration images)."""
    sites = output_sites(proto.graph, specs, placed)
    if not sites or calib_batches is None:
        return [], sites, 0
    try:
        points, images = integer_outputs(proto, sites, calib_batches, symmetric=symmetric, threads=threads)
    except Exception as exc:
        if type(exc).__module__.startswith("onnxruntime"):
            raise ExportCheckError(f"onnxruntime cannot run the graph on the calibration batches "
                                   f"({str(exc).splitlines()[0]}); nothing written to {final}") from exc
        raise
    return points, [], images


def _requant_notes(points: list[OutputPoint], unplaced: list[OutputSite], images: int) -> list[str]:
    """Card notes: which W8A8 outputs were requantized (and at which scales), or why some convs stay float."""
    notes = []
    if points:
        listed = "; ".join(f"{p.site.layer} after {p.site.after}: {p.site.container} scale {p.scale:.6g} zero point "
                           f"{p.zero_point}" + (f" (shared with {p.site.shares[0]})" if p.site.shares else "")
                           for p in points)
        how = f"min/max over {images} calibration images" if images else "no calibration needed"
        notes.append(f"Output requantization: {len(points)} W8A8 layers whose output (after its ReLU) feeds a residual "
                     "Add or several readers get a QuantizeLinear -> DequantizeLinear there, so onnxruntime runs "
                     "them as integer kernels. A point on a tensor the next layer already quantizes shares that "
                     f"QuantizeLinear's scale and zero point; the others are per-tensor {how}. The PyTorch "
                     f"reference has no such points, so the logits differ a little more: {listed}.")
    if unplaced:
        notes.append(f"{len(unplaced)} W8A8 layers stay float Conv/Gemm in onnxruntime "
                     f"({', '.join(s.layer for s in unplaced)}): their outputs feed a residual Add or several readers, "
                     "and no calibration batches were given to requantize them; pass calib_batches (training images) "
                     "to export_onnx for integer kernels.")
    return notes


def _card(*, path: Path, opset: int, profile: str | None, example: torch.Tensor, ref: nn.Module,
          costs: list[LayerCost], rows: list[Any],
          report: CheckReport, counts: Counter[str], n_qdq: int, moved: int, extra: list[str]) -> dict[str, Any]:
    import onnxruntime

    config = get_config(ref)
    total = subnet_cost(costs, config)
    params = sum(int(layer.weight.numel()) for layer in quant_layers(ref).values())
    assert config is not None
    wbits, abits = config.avg_bits()
    notes = ["The reference is the PyTorch fake-quant model in eval mode with every zero point rounded to an "
             "integer, as the graph stores it."]
    if moved:
        notes.append(f"{moved} quantizers had real-valued zero points; they were rounded for the export and for "
                     "the reference.")
    if any(r["activation"]["clipped_to_grid"] for r in rows):
        notes.append("Inputs on grids narrower than their ONNX type pass a float Clip to the grid's range before "
                     "QuantizeLinear (written as Min then Max before a 4-bit QuantizeLinear: onnxruntime 1.32's "
                     "ClipQuantFusion throws on Clip -> 4-bit Q); weights on narrower grids keep their values inside "
                     "the grid.")
    if any(r["weight"]["bits"] == r["activation"]["bits"] == 8 for r in rows):
        notes.append("W8A8 layers are in the canonical QDQ pattern onnxruntime fuses into integer kernels, which "
                     "round a bias to int32 at s_x * s_w and requantize in integers: their outputs can differ from "
                     "the reference by one step at rounding ties. Other layers add their bias in float after the "
                     "Conv/Gemm, as the reference does.")
    if any(r["bn_folded"] and r["weight"]["granularity"] == "per_tensor" for r in rows):
        notes.append("BatchNorm folded into a per-tensor weight multiplies its scale per channel: the integers are "
                     "on one per-tensor grid, the DequantizeLinear is per channel.")
    notes += extra
    return {
        "format": cards.CARD_FORMAT, "model": path.name, "opset": opset, "profile": profile,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"quantsearch": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__},
        "input": {"name": INPUT_NAME, "shape": ["batch", *map(int, example.shape[1:])]}, "output": OUTPUT_NAME,
        "config": config.to_dict(),
        "accuracy": {"samples": report.samples, "torch_top1": report.torch_top1, "ort_top1": report.ort_top1,
                     "top1_agreement": report.agreement,
                     "max_abs_logit_diff": report.max_abs_logit_diff, "max_abs_logit": report.max_abs_logit,
                     "p99_abs_logit_diff": report.p99_abs_logit_diff,
                     "reference": notes[0]},
        "totals": {"macs": total.macs, "bitops": total.bitops, "weight_bytes": total.weight_bytes,
                   "float32_weight_bytes": params * 4, "act_bytes_peak": total.act_bytes_peak,
                   "mean_weight_bits": wbits, "mean_act_bits": abits},
        "onnxruntime": {"integer_kernels": integer_kernels(counts), "float_kernels": float_kernels(counts),
                        "ops": dict(counts)},
        "n_qdq": n_qdq, "offsets_rounded": moved, "layers": rows, "notes": notes[1:],
    }


def export_onnx(qmodel: nn.Module, example: torch.Tensor, path: str | Path, *, profile: str | None = None,
                check_batches: Iterable[Batch] | None = None, opset: int = 21,
                calibration: Calibration | None = None, top1_tol: float = 0.1, logit_tol: float = 0.1,
                threads: int = 0, calib_batches: Iterable[Batch] | None = None,
                provenance: Mapping[str, Any] | None = None) -> ExportResult:
    """Export a converted model with an active config to ONNX QDQ at `path`, checked in onnxruntime.

    `example` is one input batch (its shape past the batch dimension is the model's input). `profile` refuses forms
    its target cannot run. `check_batches` ((x, y) or x; default: the example) run in onnxruntime and in the
    PyTorch fake-quant model (zero points rounded, as exported): top-1 must agree within `top1_tol` points and the
    99th percentile (over images) of each image's largest logit difference stay within `logit_tol` x max(1, largest
    |logit|) (a percentile: at 2..4 bits one activation on a rounding tie, summed in another order, moves a whole
    grid step in one image), else ExportCheckError and no file
    under `path`. `calibration` (a method, an (activation, weight) pair, a per-layer mapping, or a DQSS Strategy)
    goes into the model card. The card is written beside the model (`<stem>.card.md`, `<stem>.card.json`).
    `threads` is onnxruntime's intra-op thread count for the check (0: its default). `calib_batches` (training
    images, never the check batches) set the scales of the output quantization points W8A8 layers need to run as
    integer kernels when their outputs feed a residual Add or several readers (see `requant`); without them those
    layers stay float Conv/Gemm in onnxruntime and the card says so.
    """
    start = time.perf_counter()
    path = Path(path)
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ConfigError(f"opset {opset} is not supported: choose {MIN_OPSET}..{onnx.defs.onnx_opset_version()} "
                          "(21 or later stores 2..4-bit grids as INT4/UINT4, earlier ones in 8-bit types)")
    if not quant_layers(qmodel):
        raise ConfigError("the model has no quantized layers; quantize it first: quantsearch.quantize(model, 'W8A8')")
    if get_config(qmodel) is None:
        raise ConfigError("some quantized layers run in float; activate a config (quantsearch.quantize or "
                          "set_config) and calibrate before exporting")
    ref = copy.deepcopy(qmodel).cpu().eval()
    moved = round_model_offsets(ref)
    specs = layer_exports(ref)
    rules = check_profile(specs, profile)
    example = example.detach().cpu().float()

    proto = trace_float(ref, example, opset)
    gains = fold_batchnorm(proto.graph, [s.name for s in specs if s.kind == "conv"])
    placed = insert_qdq(proto, specs, gains, opset, rules.signed_activations)
    prune(proto.graph)
    points, unplaced, calib_images = _requantize(proto, specs, placed, calib_batches,
                                                 rules.zero_point_free_activations, threads, path)
    config = get_config(ref)
    assert config is not None
    onnx.helper.set_model_props(proto, {"quantsearch.config": config.to_json(),
                                        "quantsearch.profile": profile or ""})
    proto.producer_name, proto.producer_version = "quantsearch", __version__
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise QuantsearchError(f"the exported graph fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    n_qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)
    methods = _methods(calibration, [s.name for s in specs])
    costs = layer_costs(ref, tuple(example.shape[1:]))
    rows = cards.layer_rows(specs, placed, costs, methods, {p.site.layer: p.to_dict() for p in points})

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(proto.SerializeToString())
        report, counts = _run_check(tmp, ref, check_batches if check_batches is not None else [example], threads,
                                    path)
        _verify(report, top1_tol, logit_tol, path)
        card = _card(path=path, opset=opset, profile=profile, example=example, ref=ref, costs=costs, rows=rows,
                     report=report, counts=counts, n_qdq=n_qdq, moved=moved,
                     extra=_requant_notes(points, unplaced, calib_images))
        if provenance:
            card["provenance"] = dict(provenance)
        md, js = cards.write_card(card, path)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportResult(path, md, js, report.torch_top1, report.ort_top1, report.max_abs_logit_diff, n_qdq,
                        integer_kernels(counts), float_kernels(counts), report.samples, report.agreement, moved, opset,
                        time.perf_counter() - start, report.p99_abs_logit_diff)
