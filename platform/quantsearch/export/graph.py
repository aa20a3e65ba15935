"""Small helpers over an ONNX graph: who produces and consumes a tensor, constant values, dead-code removal."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes reading it, in graph order."""
    out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name and node not in out[name]:
                out[name].append(node)
    return out


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node writing it."""
    return {name: node for node in graph.node for name in node.output if name}


def const_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of an initializer, a Constant node, or an Identity chain ending in one; None otherwise."""
    inits = {t.name: t for t in graph.initializer}
    made = producers(graph)
    for _ in range(16):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = made.get(name)
        if node is None:
            return None
        if node.op_type == "Identity":
            name = node.input[0]
            continue
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None
    return None


def prune(graph: onnx.GraphProto) -> None:
    """Remove nodes whose outputs nothing reads, then initializers nothing reads (in place)."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {name for node in graph.node for name in node.input} | outputs
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    known = used | {name for node in graph.node for name in node.output}
    keep_vi = [v for v in graph.value_info if v.name in known]
    del graph.value_info[:]
    graph.value_info.extend(keep_vi)
