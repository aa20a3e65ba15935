"""BatchNorm folding on the ONNX graph: a quantized Conv whose only reader is a BatchNormalization absorbs it.

BN(conv(x, W) + b) = conv(x, W * g) + (b - mean) * g + beta, g = gamma / sqrt(var + eps) per output channel. The
weight stays on its integer grid: g multiplies the weight's dequantization scale (so a per-tensor weight followed
by BN dequantizes with one scale per channel), and the bias is float.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from quantsearch.export.graph import const_value, consumers
from quantsearch.export.trace import weight_name


def fold_batchnorm(graph: onnx.GraphProto, layers: list[str]) -> dict[str, np.ndarray]:
    """Fold the BN after each named layer's Conv (in place); returns layer -> per-channel gain g (float64)."""
    outputs = {o.name for o in graph.output}
    gains: dict[str, np.ndarray] = {}
    for layer in layers:
        readers = consumers(graph)
        conv = next((n for n in readers.get(weight_name(layer), []) if n.op_type == "Conv"), None)
        if conv is None or conv.output[0] in outputs:
            continue
        after = readers.get(conv.output[0], [])
        if len(after) != 1 or after[0].op_type != "BatchNormalization" or after[0].input[0] != conv.output[0]:
            continue
        bn = after[0]
        if len(bn.output) != 1:
            continue
        params = [const_value(graph, name) for name in bn.input[1:5]]
        if any(p is None for p in params):
            continue
        gamma, beta, mean, var = (np.asarray(p, dtype=np.float64).reshape(-1) for p in params)
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        g = gamma / np.sqrt(var + eps)
        bias = np.zeros_like(g)
        if len(conv.input) > 2 and conv.input[2]:
            b = const_value(graph, conv.input[2])
            if b is None:
                continue
            bias = np.asarray(b, dtype=np.float64).reshape(-1)
        name = f"{layer}.bias_folded"
        graph.initializer.append(numpy_helper.from_array(((bias - mean) * g + beta).astype(np.float32), name))
        if len(conv.input) > 2:
            conv.input[2] = name
        else:
            conv.input.append(name)
        conv.output[0] = bn.output[0]
        graph.node.remove(bn)
        gains[layer] = g
    return gains
