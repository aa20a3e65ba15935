"""The onnxruntime check: run the written model on batches beside the PyTorch fake-quant model, and count which
Conv/Gemm/MatMul run as integer kernels in onnxruntime's optimized graph."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from quantsearch.data.loader import Batch, split_batch

# onnxruntime's integer compute kernels (QDQ Conv/Gemm/MatMul groups fuse into these; NHWC variants included)
INTEGER_KERNELS = frozenset({"QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat", "ConvInteger",
                             "MatMulInteger", "DynamicQuantizeMatMul"})
FLOAT_KERNELS = frozenset({"Conv", "FusedConv", "NchwcConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"})


@dataclass(frozen=True)
class CheckReport:
    """What running both models on the check batches showed (top-1 in percent; None without labels)."""

    samples: int
    torch_top1: float | None
    ort_top1: float | None
    agreement: float
    max_abs_logit_diff: float
    max_abs_logit: float
    p99_abs_logit_diff: float = 0.0  # 99th percentile over images of each image's largest |logit difference|


def session(path: str | Path, optimized_path: str | Path | None = None, threads: int = 0) -> object:
    """An onnxruntime CPU session at full optimization, optionally saving the optimized graph."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def compare(reference: nn.Module, sess: object, batches: Iterable[Batch], input_name: str) -> CheckReport:
    """Logits of the reference model (CPU, eval) and of the session on every batch; top-1 against labels."""
    reference.eval()
    n = correct_t = correct_o = agree = 0
    labelled = True
    max_diff = max_logit = 0.0
    per_image: list[torch.Tensor] = []
    for batch in batches:
        x, y = split_batch(batch)
        x = x.detach().to("cpu", torch.float32)
        ref = reference(x).float()
        got = torch.from_numpy(np.asarray(sess.run(None, {input_name: x.numpy()})[0])).float()  # type: ignore[attr-defined]
        if got.shape != ref.shape:
            raise ValueError(f"onnxruntime logits have shape {tuple(got.shape)}, PyTorch {tuple(ref.shape)}")
        max_diff = max(max_diff, float((got - ref).abs().max()) if ref.numel() else 0.0)
        if ref.numel():
            per_image.append((got - ref).abs().reshape(len(ref), -1).amax(1))
        max_logit = max(max_logit, float(ref.abs().max()) if ref.numel() else 0.0)
        pt, po = ref.argmax(1), got.argmax(1)
        agree += int((pt == po).sum())
        n += len(x)
        if y is None:
            labelled = False
        else:
            y = y.to("cpu")
            correct_t += int((pt == y).sum())
            correct_o += int((po == y).sum())
    if n == 0:
        raise ValueError("no check batches")
    top = (lambda c: 100.0 * c / n) if labelled else (lambda c: None)
    p99 = float(torch.quantile(torch.cat(per_image), 0.99)) if per_image else 0.0
    return CheckReport(n, top(correct_t), top(correct_o), 100.0 * agree / n, max_diff, max_logit, p99)


def kernel_counts(optimized: onnx.ModelProto) -> Counter[str]:
    """Op type -> count in onnxruntime's optimized graph (any domain)."""
    return Counter(node.op_type for node in optimized.graph.node)


def integer_kernels(counts: Counter[str]) -> int:
    """How many compute ops run as integer kernels."""
    return sum(v for k, v in counts.items() if k in INTEGER_KERNELS)


def float_kernels(counts: Counter[str]) -> int:
    """How many Conv/Gemm/MatMul still run in float."""
    return sum(v for k, v in counts.items() if k in FLOAT_KERNELS)
