"""The float graph: the converted model traced to ONNX with its quantizers off, each quantized layer's weight
findable by its parameter name (BatchNorm kept as nodes, folded later by `fold`)."""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from onnx import version_converter
from torch import nn

from quantsearch.errors import QuantsearchError
from quantsearch.quant.convert import quant_layers
from quantsearch.quant.layers import QuantConv2d, QuantLayer

TORCHSCRIPT_MAX_OPSET = 20
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def _plain(layer: QuantLayer) -> nn.Conv2d | nn.Linear:
    """The float Conv2d / Linear twin of a quantized layer (same hyper-parameters, bias and dtype), no quantizers."""
    if isinstance(layer, QuantConv2d):
        conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,  # type: ignore[arg-type]
                         layer.stride, layer.padding, layer.dilation, layer.groups,  # type: ignore[arg-type]
                         layer.bias is not None, layer.padding_mode)
        out: nn.Conv2d | nn.Linear = conv
    else:
        out = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None)
    out.load_state_dict({k: v for k, v in layer.state_dict().items() if k in ("weight", "bias")})
    return out.to(layer.weight.dtype)


def weight_name(layer: str) -> str:
    """The initializer name the tracer gives a layer's weight."""
    return f"{layer}.weight"


@torch.no_grad()
def trace_float(model: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    """ONNX of `model` (CPU, eval) in float at `opset`, batch dimension dynamic.

    Each quantized layer's weight is replaced in a private copy by a tag unique to the layer (the tracer merges
    equal initializers, which would lose a layer's name); the QDQ pass replaces the tags with the real integers.
    """
    twin = copy.deepcopy(model).cpu().eval()
    for i, (name, layer) in enumerate(quant_layers(twin).items()):
        plain = _plain(layer)
        plain.weight.copy_(torch.full_like(plain.weight, 1000.0 + i) + torch.linspace(0, 0.5, plain.weight.numel())
                           .reshape(plain.weight.shape))
        parent, _, attr = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, attr, plain)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as scratch:
        warnings.simplefilter("ignore")
        traced = Path(scratch) / "float.onnx"
        try:
            torch.onnx.export(twin, (example.cpu(),), traced, dynamo=False,
                              opset_version=min(opset, TORCHSCRIPT_MAX_OPSET), do_constant_folding=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              training=torch.onnx.TrainingMode.EVAL)
        except Exception as exc:  # the tracer's many failure types: one line naming the model's problem
            raise QuantsearchError(f"torch.onnx.export cannot trace this model ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        proto = onnx.load(str(traced))
    if opset > TORCHSCRIPT_MAX_OPSET:
        proto = version_converter.convert_version(proto, opset)
    return proto
