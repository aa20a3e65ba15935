"""The QDQ pass: DequantizeLinear on each quantized layer's integer weight and QuantizeLinear -> DequantizeLinear
(after a Clip to the grid's float range when the grid is narrower than its container) on its input.

Biases: a W8A8 Conv keeps its float bias (the canonical QDQ pattern: onnxruntime rounds it to int32 at s_x * s_w
when it fuses the group into QLinearConv); a W8A8 Gemm gets that int32 bias from us (a Gemm whose output stays
float fuses into QGemm only with it); every other layer adds its bias after the Conv/Gemm in float, exactly as
the PyTorch model does (see `_bias_as_add`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantsearch.errors import QuantsearchError
from quantsearch.export.containers import Placement, int_tensor, place
from quantsearch.export.graph import const_value, consumers
from quantsearch.export.specs import LayerExport
from quantsearch.export.trace import weight_name


@dataclass(frozen=True)
class LayerGraph:
    """How one layer landed in the graph: its compute node, containers, whether its input is clipped, BN folded."""

    name: str
    op: str
    weight_container: str
    weight_shift: int
    act_container: str
    act_shift: int
    act_clipped: bool
    bn_folded: bool
    weight_axis: int | None
    weight_zero_points: tuple[int, ...]


def _compute_node(graph: onnx.GraphProto, layer: str) -> tuple[onnx.NodeProto, list[onnx.NodeProto]]:
    """(the Conv/Gemm/MatMul computing with the layer's weight, every node reading the weight initializer)."""
    readers = consumers(graph)
    users = readers.get(weight_name(layer), [])
    for node in users:
        if node.op_type in ("Conv", "Gemm") and list(node.input).index(weight_name(layer)) == 1:
            return node, users
        if node.op_type == "Transpose":
            after = readers.get(node.output[0], [])
            if len(after) == 1 and after[0].op_type in ("MatMul", "Gemm") and after[0].input[1] == node.output[0]:
                return after[0], users
    raise QuantsearchError(f"layer {layer}: its weight feeds no Conv/Gemm/MatMul in the traced graph "
                           f"({[n.op_type for n in users] or 'no reader'}); this model cannot be exported")


def _weight_axis(compute: onnx.NodeProto, users: list[onnx.NodeProto]) -> int:
    if compute.op_type == "Gemm" and compute in users:
        trans_b = next((a.i for a in compute.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 0


def _scalar(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def _weight_nodes(graph: onnx.GraphProto, spec: LayerExport, gain: np.ndarray | None, axis: int, opset: int
                  ) -> tuple[onnx.NodeProto, Placement, int | None, tuple[int, ...]]:
    w = spec.weight
    channels = w.values.shape[axis]
    scale = w.scale.astype(np.float64)
    zp = w.zero_point
    per_channel = w.per_channel or gain is not None
    if per_channel:
        scale = np.broadcast_to(scale, (channels,)).copy()
        zp = np.broadcast_to(zp, (channels,)).copy()
    values = w.values
    if gain is not None:
        flip = gain < 0  # a negative BN gain: mirror the channel's integers so every scale stays positive
        scale = scale * np.abs(gain)
        if flip.any():
            values, zp = values.copy(), zp.copy()
            for c in np.flatnonzero(flip):
                sel = (slice(None),) * axis + (c,)
                # -(q - z): negate when the grid holds -q (a symmetric weight keeps zero point 0), else mirror:
                # (M - q) - (M - z) with M = qmin + qmax, which stays on the grid
                negatable = zp[c] == 0 and -values[sel].min() <= w.qmax and -values[sel].max() >= w.qmin
                m = 0 if negatable else w.qmin + w.qmax
                values[sel] = m - values[sel]
                zp[c] = m - zp[c]
    plc = place(spec.config.weight.bits, w.qmin, w.qmax, int(zp.min()), int(zp.max()), opset=opset)
    base = f"{spec.name}.weight"
    graph.initializer.append(int_tensor(f"{base}_quantized", values + plc.shift, plc.container))
    shape = [channels] if per_channel else []
    graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32).reshape(shape), f"{base}_scale"))
    graph.initializer.append(int_tensor(f"{base}_zero_point", (zp + plc.shift).reshape(shape), plc.container))
    node = helper.make_node("DequantizeLinear", [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
                            [f"{base}_dequantized"], name=f"{base}/DequantizeLinear")
    if per_channel:
        node.attribute.append(helper.make_attribute("axis", axis))
    return node, plc, axis if per_channel else None, tuple(sorted({int(z) + plc.shift for z in zp.reshape(-1)}))


def _input_nodes(graph: onnx.GraphProto, spec: LayerExport, source: str, opset: int, signed_only: bool
                 ) -> tuple[list[onnx.NodeProto], Placement, str]:
    a = spec.act
    plc = place(spec.config.activation.bits, a.qmin, a.qmax, a.zero_point, a.zero_point, opset=opset,
                signed_only=signed_only)
    base = f"{spec.name}.input"
    nodes = []
    if not plc.fills_container:  # keep the narrower grid: clip to its float range, then the container's Q is exact
        lo = np.float32((a.qmin - a.zero_point) * np.float64(a.scale))
        hi = np.float32((a.qmax - a.zero_point) * np.float64(a.scale))
        graph.initializer.extend([_scalar(f"{base}_clip_min", float(lo)), _scalar(f"{base}_clip_max", float(hi))])
        nodes.append(helper.make_node("Clip", [source, f"{base}_clip_min", f"{base}_clip_max"], [f"{base}_clipped"],
                                      name=f"{base}/Clip"))
        source = f"{base}_clipped"
    graph.initializer.extend([_scalar(f"{base}_scale", a.scale),
                              int_tensor(f"{base}_zero_point", np.array(a.zero_point + plc.shift), plc.container)])
    q_inputs = [f"{base}_scale", f"{base}_zero_point"]
    nodes.append(helper.make_node("QuantizeLinear", [source, *q_inputs], [f"{base}_quantized"],
                                  name=f"{base}/QuantizeLinear"))
    nodes.append(helper.make_node("DequantizeLinear", [f"{base}_quantized", *q_inputs], [f"{base}_dequantized"],
                                  name=f"{base}/DequantizeLinear"))
    return nodes, plc, f"{base}_dequantized"


def _bias_as_add(graph: onnx.GraphProto, spec: LayerExport, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """Move a Conv/Gemm's float bias into an Add after it (the same values, added in float).

    onnxruntime's BiasQuantization re-rounds a Conv/Gemm's float initializer bias to int32 at s_x * s_w whenever
    its inputs are DequantizeLinear outputs; below 8 bits that step is coarse enough to move many outputs across
    the next rounding boundary, and an int32 bias at any other scale is misread when the group fuses. A bias added
    afterwards is left alone. Returns the Add node ([] when there is no constant bias)."""
    if len(node.input) < 3 or not node.input[2] or any(a.name == "beta" and a.f != 1.0 for a in node.attribute):
        return []
    bias = const_value(graph, node.input[2])
    if bias is None or bias.ndim != 1:
        return []
    rank = spec.weight.values.ndim if node.op_type == "Conv" else 1
    base = f"{spec.name}.bias"
    graph.initializer.append(numpy_helper.from_array(
        bias.astype(np.float32).reshape((-1,) + (1,) * (rank - 2 if node.op_type == "Conv" else 0)), f"{base}_add"))
    out = node.output[0]
    node.output[0] = f"{base}_before_add"
    del node.input[2]
    return [helper.make_node("Add", [node.output[0], f"{base}_add"], [out], name=f"{base}/Add")]


def _int32_bias(graph: onnx.GraphProto, spec: LayerExport, gemm: onnx.NodeProto, w_dq: onnx.NodeProto
                ) -> list[onnx.NodeProto]:
    """A Gemm's float bias as int32 at scale s_x * s_w (onnxruntime's rule): with it, a Gemm whose output stays
    float fuses into QGemm. Changes the bias by at most half a step; [] when there is no constant bias or it
    would overflow int32."""
    if len(gemm.input) < 3 or not gemm.input[2] or any(a.name == "beta" and a.f != 1.0 for a in gemm.attribute):
        return []
    bias = const_value(graph, gemm.input[2])
    if bias is None or bias.ndim != 1:
        return []
    inits = {t.name: t for t in graph.initializer}
    w_scale = numpy_helper.to_array(inits[w_dq.input[1]]).astype(np.float64)
    scale = np.broadcast_to(np.float64(np.float32(spec.act.scale)) * w_scale, bias.shape).astype(np.float32)
    q = np.round(bias.astype(np.float64) / scale.astype(np.float64))
    if not np.isfinite(q).all() or np.abs(q).max(initial=0) >= 2**31 - 1:
        return []
    base = f"{spec.name}.bias"
    graph.initializer.extend([numpy_helper.from_array(q.astype(np.int32), f"{base}_quantized"),
                              numpy_helper.from_array(scale, f"{base}_scale"),
                              numpy_helper.from_array(np.zeros(bias.shape, np.int32), f"{base}_zero_point")])
    gemm.input[2] = f"{base}_dequantized"
    return [helper.make_node("DequantizeLinear", [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
                             [f"{base}_dequantized"], name=f"{base}/DequantizeLinear", axis=0)]


def _min_max_for_clips(graph: onnx.GraphProto) -> int:
    """Rewrite each Clip whose only reader is a QuantizeLinear to a 4- or 16-bit type as Min then Max (the same
    values): onnxruntime 1.32's ClipQuantFusion throws on such a pair while building a session. Returns how many."""
    readers = consumers(graph)
    zp_type = {t.name: t.data_type for t in graph.initializer}
    eight = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    done = 0
    for node in list(graph.node):
        after = readers.get(node.output[0], []) if node.op_type == "Clip" else []
        if len(after) != 1 or after[0].op_type != "QuantizeLinear" or len(after[0].input) < 3 \
                or zp_type.get(after[0].input[2], onnx.TensorProto.UINT8) in eight:
            continue
        x, lo, hi = [*node.input, "", ""][:3]
        nodes = []
        if hi:
            nodes.append(helper.make_node("Min", [x, hi], [f"{node.output[0]}_min"], name=f"{node.name}/Min"))
            x = nodes[-1].output[0]
        nodes.append(helper.make_node("Max" if lo else "Identity", [x, lo] if lo else [x], [node.output[0]],
                                      name=f"{node.name}/{'Max' if lo else 'Identity'}"))
        at = list(graph.node).index(node)
        graph.node.remove(node)
        for k, new in enumerate(nodes):
            graph.node.insert(at + k, new)
        done += 1
    return done


def insert_qdq(model: onnx.ModelProto, specs: list[LayerExport], gains: dict[str, np.ndarray], opset: int,
               signed_activations: bool = False) -> list[LayerGraph]:
    """Quantize every layer of `specs` in the graph (in place); returns how each one landed."""
    graph = model.graph
    before: dict[int, list[onnx.NodeProto]] = {}
    names = set()
    for i, node in enumerate(graph.node):  # unique node names: the index below is by name (protobuf wrappers are
        if not node.name or node.name in names:  # not stable objects)
            node.name = f"{node.op_type}_{i}"
        names.add(node.name)
    index = {n.name: i for i, n in enumerate(graph.node)}
    inits = {t.name for t in graph.initializer}
    out = []
    for spec in specs:
        wname = weight_name(spec.name)
        if wname not in inits:
            raise QuantsearchError(f"layer {spec.name}: no initializer {wname} in the traced graph; "
                                   "this model cannot be exported")
        compute, users = _compute_node(graph, spec.name)
        axis = _weight_axis(compute, users)
        w_node, w_plc, w_axis, w_zps = _weight_nodes(graph, spec, gains.get(spec.name), axis, opset)
        for user in users:
            for k, name in enumerate(user.input):
                if name == wname:
                    user.input[k] = w_node.output[0]
        before.setdefault(min(index[u.name] for u in users), []).append(w_node)
        a_nodes, a_plc, a_out = _input_nodes(graph, spec, compute.input[0], opset, signed_activations)
        compute.input[0] = a_out
        after: list[onnx.NodeProto] = []
        if spec.config.weight.bits == spec.config.activation.bits == 8:  # W8A8: an integer-kernel candidate
            if compute.op_type == "Gemm":
                a_nodes += _int32_bias(graph, spec, compute, w_node)
        elif compute.op_type in ("Conv", "Gemm"):
            after = _bias_as_add(graph, spec, compute)
        before.setdefault(index[compute.name], []).extend(a_nodes)
        if after:
            before.setdefault(index[compute.name] + 1, []).extend(after)
        out.append(LayerGraph(spec.name, compute.op_type, w_plc.container.name, w_plc.shift, a_plc.container.name,
                              a_plc.shift, not a_plc.fills_container, spec.name in gains, w_axis, w_zps))
    nodes = list(graph.node)
    del graph.node[:]
    for i, node in enumerate(nodes):
        graph.node.extend(before.get(i, []))
        graph.node.append(node)
    graph.node.extend(before.get(len(nodes), []))
    _min_max_for_clips(graph)
    return out
