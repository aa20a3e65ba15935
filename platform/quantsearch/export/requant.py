"""Integer outputs for W8A8 layers: a QuantizeLinear -> DequantizeLinear on each W8A8 Conv/Gemm output (after its
ReLU / ReLU6 when that is its only reader) that does not already flow into one 8-bit QuantizeLinear, so that
onnxruntime fuses `DQ -> Conv -> Q` into QLinearConv and the residual Add (or the other readers) read the DQ.

onnxruntime fuses a QDQ Conv/Gemm group only when the compute node's output (optionally through one Relu/Clip)
reaches exactly one QuantizeLinear of the input's 8-bit type; a conv feeding a residual Add, or a ReLU feeding both
the next layer's Q and an identity branch, otherwise stays a float Conv between DQ and Q (slower than FP32). The
PyTorch model has no quantizer there. A tensor the next layer already quantizes (a ReLU feeding that layer's Q
and an identity branch) shares that QuantizeLinear's scale and zero point: one grid per tensor, as onnxruntime's
own quantize_static makes, so the next layer sees exactly the reference's integers and onnxruntime drops the then
exact DQ -> Q pair (measured on mobilenetv2-tiny W8A8, 512 Fashion-MNIST test images: max |logit diff| 0.38
instead of 0.87 with a fresh min/max scale there). The others (a conv feeding only a residual Add) take their
scales from calibration images run through the finished graph in onnxruntime: per-tensor min/max (0 included),
asymmetric on the layer's input type (a non-negative tensor gets the type's lowest value as zero point, which lets
onnxruntime drop the ReLU), symmetric INT8 for targets that run zero-point-free activations. An output that a
layer with sub-8-bit inputs quantizes stays float: below 8 bits the graph reproduces the reference exactly.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantsearch.data.loader import Batch, split_batch
from quantsearch.errors import ConfigError
from quantsearch.export.check import session
from quantsearch.export.containers import CONTAINERS, int_tensor
from quantsearch.export.graph import consumers
from quantsearch.export.qdq import LayerGraph
from quantsearch.export.specs import LayerExport
from quantsearch.export.trace import INPUT_NAME

# ops onnxruntime removes between a Conv and its output Q (ReluQuantFusion, ClipQuantFusion)
ACTIVATIONS = ("Relu", "Clip")
COMPUTE = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class OutputSite:
    """Where a W8A8 layer's output needs a quantization point: the float tensor, the op writing it, its type, and
    the QuantizeLinear already reading it whose scale and zero point the point shares (None: calibrate one)."""

    layer: str
    tensor: str
    after: str
    container: str
    shares: tuple[str, str, str] | None = None  # (QuantizeLinear name, its scale, its zero point initializer)


@dataclass(frozen=True)
class OutputPoint:
    """A placed output quantization point: its site, per-tensor scale and zero point, and where they came from
    (the calibrated range, or the QuantizeLinear they are shared with)."""

    site: OutputSite
    scale: float
    zero_point: int
    lo: float | None
    hi: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (for the model card)."""
        shared = None if self.site.shares is None else self.site.shares[0]
        return {"after": self.site.after, "tensor": self.site.tensor, "onnx_type": self.site.container,
                "scale": self.scale, "zero_point": self.zero_point, "shared_with": shared,
                "calibrated_min": self.lo, "calibrated_max": self.hi}


def _compute_output(graph: onnx.GraphProto, layer: str, readers: dict[str, list[onnx.NodeProto]]
                    ) -> onnx.NodeProto | None:
    """The Conv/Gemm/MatMul computing with the layer's dequantized weight (through a Transpose for MatMul)."""
    for node in readers.get(f"{layer}.weight_dequantized", []):
        if node.op_type in COMPUTE:
            return node
        if node.op_type == "Transpose":
            after = readers.get(node.output[0], [])
            if len(after) == 1 and after[0].op_type in COMPUTE:
                return after[0]
    return None


def _zero_point_type(graph: onnx.GraphProto, q: onnx.NodeProto) -> int | None:
    """The TensorProto type of a QuantizeLinear's zero point initializer (None without one)."""
    if len(q.input) < 3 or not q.input[2]:
        return None
    return next((t.data_type for t in graph.initializer if t.name == q.input[2]), None)


def _qparams(graph: onnx.GraphProto, scale_name: str, zp_name: str) -> tuple[float, int] | None:
    """A per-tensor (scale, zero point) from their initializers; None when they are not scalar initializers."""
    inits = {t.name: t for t in graph.initializer}
    if scale_name not in inits or zp_name not in inits:
        return None
    scale, zp = numpy_helper.to_array(inits[scale_name]), numpy_helper.to_array(inits[zp_name])
    if scale.size != 1 or zp.size != 1:
        return None
    return float(scale.reshape(())), int(zp.reshape(()))


def _shared(graph: onnx.GraphProto, users: list[onnx.NodeProto], tensor: str, dtype: int
            ) -> tuple[str, str, str] | None:
    """The QuantizeLinear of `dtype` already reading `tensor` (the next layer's input quantizer), as (name, scale,
    zero point), when every such reader quantizes it the same way; None when there is none or they disagree."""
    readers = [n for n in users if n.op_type == "QuantizeLinear" and n.input[0] == tensor and len(n.input) == 3
               and _zero_point_type(graph, n) == dtype]
    params = {_qparams(graph, n.input[1], n.input[2]) for n in readers}
    if len(params) != 1 or None in params:
        return None
    return readers[0].name, readers[0].input[1], readers[0].input[2]


def _next_layers(tensor: str, readers: dict[str, list[onnx.NodeProto]]) -> list[str]:
    """The layers whose input QuantizeLinear reads `tensor`, directly or through the float Clip/Min/Max/Relu nodes
    in front of it (a narrower grid's clip, a ReLU)."""
    out, todo, seen = [], [tensor], set()
    while todo:
        name = todo.pop()
        for node in readers.get(name, []):
            if node.op_type == "QuantizeLinear" and node.output[0].endswith(".input_quantized"):
                out.append(node.output[0].removesuffix(".input_quantized"))
            elif node.op_type in ("Clip", "Min", "Max", "Relu") and node.output[0] not in seen:
                seen.add(node.output[0])
                todo.append(node.output[0])
    return out


def output_sites(graph: onnx.GraphProto, specs: list[LayerExport], placed: list[LayerGraph]) -> list[OutputSite]:
    """Every W8A8 layer whose output (after a ReLU that is its only reader) does not reach exactly one QuantizeLinear
    of its input's type. Left alone: a graph output (the logits: onnxruntime makes a float-output QGemm there), and
    an output a layer below 8-bit inputs quantizes (a W8A8 stem pinned in a W4A4 model): below 8 bits the graph
    computes exactly what the reference computes, and an extra rounding in front would end that."""
    readers = consumers(graph)
    outputs = {o.name for o in graph.output}
    where = {g.name: g for g in placed}
    act_bits = {spec.name: spec.config.activation.bits for spec in specs}
    sites = []
    for spec in specs:
        if not spec.config.weight.bits == spec.config.activation.bits == 8:
            continue
        compute = _compute_output(graph, spec.name, readers)
        container = where[spec.name].act_container
        if compute is None or container not in ("INT8", "UINT8"):
            continue
        tensor, after = compute.output[0], compute.op_type
        users = readers.get(tensor, [])
        if len(users) == 1 and users[0].op_type in ACTIVATIONS and users[0].input[0] == tensor \
                and tensor not in outputs:
            tensor, after = users[0].output[0], users[0].op_type
            users = readers.get(tensor, [])
        if tensor in outputs:
            continue
        if any(act_bits.get(layer, 8) < 8 for layer in _next_layers(tensor, readers)):
            continue
        dtype = CONTAINERS[container].dtype
        if len(users) == 1 and users[0].op_type == "QuantizeLinear" and users[0].input[0] == tensor \
                and _zero_point_type(graph, users[0]) == dtype:
            continue  # already the canonical group onnxruntime fuses
        sites.append(OutputSite(spec.name, tensor, after, container, _shared(graph, users, tensor, dtype)))
    return sites


def calibrate_ranges(model: onnx.ModelProto, tensors: list[str], batches: Iterable[Batch], threads: int = 0
                     ) -> tuple[dict[str, tuple[float, float]], int]:
    """Per-tensor (min, max) of `tensors` over the batches, run through a copy of the graph that also outputs them
    (in onnxruntime: the layers before them compute as they will when deployed); returns the ranges and the images."""
    probe = copy.deepcopy(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in tensors if t not in known)
    lo = dict.fromkeys(tensors, np.inf)
    hi = dict.fromkeys(tensors, -np.inf)
    images = 0
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "probe.onnx"
        path.write_bytes(probe.SerializeToString())
        sess: Any = session(path, threads=threads)
        for batch in batches:
            x, _ = split_batch(batch)
            got = sess.run(tensors, {INPUT_NAME: x.detach().to("cpu").float().numpy()})
            for name, value in zip(tensors, got, strict=True):
                if value.size:
                    lo[name] = min(lo[name], float(value.min()))
                    hi[name] = max(hi[name], float(value.max()))
            images += len(x)
    if images == 0:
        raise ConfigError("calib_batches yielded no images; pass a few hundred training images (or calib_batches=None)")
    return {t: (lo[t], hi[t]) for t in tensors}, images


def quant_params(lo: float, hi: float, container: str, symmetric: bool) -> tuple[float, int]:
    """(scale, zero point) of a per-tensor 8-bit grid covering [lo, hi] and 0: min/max affine on `container`
    (zero point at the type's lowest value for a non-negative range), or symmetric with zero point 0."""
    c = CONTAINERS[container]
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        scale = max(-lo, hi) / min(-c.lo, c.hi)
        return (scale if scale > 0 else 1.0), 0
    scale = (hi - lo) / (c.hi - c.lo)
    if not scale > 0:  # a tensor that was 0 everywhere: any scale represents it
        return 1.0, c.lo
    return scale, int(np.clip(c.lo + np.round(-lo / scale), c.lo, c.hi))


def insert_points(graph: onnx.GraphProto, points: list[OutputPoint]) -> None:
    """Put QuantizeLinear -> DequantizeLinear on each point's tensor right after the node writing it; every other
    reader of the tensor reads the DequantizeLinear (in place). A shared point uses its QuantizeLinear's own
    initializers: the DequantizeLinear -> QuantizeLinear pair it makes is then exact, and onnxruntime drops it."""
    for p in points:
        base = f"{p.site.layer}.output"
        if p.site.shares is not None:
            params = list(p.site.shares[1:])
        else:
            graph.initializer.extend([numpy_helper.from_array(np.array(p.scale, dtype=np.float32), f"{base}_scale"),
                                      int_tensor(f"{base}_zero_point", np.array(p.zero_point),
                                                 CONTAINERS[p.site.container])])
            params = [f"{base}_scale", f"{base}_zero_point"]
        q = helper.make_node("QuantizeLinear", [p.site.tensor, *params], [f"{base}_quantized"],
                             name=f"{base}/QuantizeLinear")
        dq = helper.make_node("DequantizeLinear", [f"{base}_quantized", *params], [f"{base}_dequantized"],
                              name=f"{base}/DequantizeLinear")
        for node in graph.node:
            for k, name in enumerate(node.input):
                if name == p.site.tensor:
                    node.input[k] = dq.output[0]
        at = next(i for i, n in enumerate(graph.node) if p.site.tensor in n.output)
        graph.node.insert(at + 1, q)
        graph.node.insert(at + 2, dq)


def integer_outputs(model: onnx.ModelProto, sites: list[OutputSite], batches: Iterable[Batch], *,
                    symmetric: bool = False, threads: int = 0) -> tuple[list[OutputPoint], int]:
    """Quantize each site in the graph (in place): with the scale and zero point of the QuantizeLinear already
    reading it (one grid per tensor, and the next layer sees exactly the reference's integers), else calibrated on
    the batches (min/max). Returns the points and how many calibration images set them (0: none needed)."""
    fresh = [s.tensor for s in sites if s.shares is None]
    ranges, images = calibrate_ranges(model, fresh, batches, threads) if fresh else ({}, 0)
    points = []
    for s in sites:
        if s.shares is not None:
            params = _qparams(model.graph, *s.shares[1:])
            assert params is not None  # checked when the site was found
            points.append(OutputPoint(s, params[0], params[1], None, None))
            continue
        lo, hi = ranges[s.tensor]
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ConfigError(f"layer {s.layer}: its output is not finite on the calibration images; check the model "
                              "and the calibration data")
        scale, zp = quant_params(lo, hi, s.container, symmetric)
        points.append(OutputPoint(s, float(np.float32(scale)), zp, lo, hi))  # the scale as the graph stores it
    insert_points(model.graph, points)
    return points, images
