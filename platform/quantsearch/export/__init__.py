"""Export: ONNX QDQ graphs of quantized models (2..8 bits), checked in onnxruntime, with a model card."""

from quantsearch.export.card import card_paths, read_card, write_card
from quantsearch.export.check import INTEGER_KERNELS, kernel_counts
from quantsearch.export.deployable import check_profile
from quantsearch.export.exporter import ExportCheckError, ExportResult, export_onnx

__all__ = [
    "INTEGER_KERNELS",
    "ExportCheckError",
    "ExportResult",
    "card_paths",
    "check_profile",
    "export_onnx",
    "kernel_counts",
    "read_card",
    "write_card",
]
