"""An export in MLflow: the check's figures, the model card and export.json, and the ONNX model itself logged with
`mlflow.onnx` and registered under a name (each export a new version), so a deployment can pull
`models:/<name>/<version>`."""

from __future__ import annotations

import json
from pathlib import Path

from quantsearch.export.exporter import ExportResult
from quantsearch.export.job import result_path
from quantsearch.tracking.mlflow_tracking import JobTracker

MODEL_NAME = "onnx"  # the logged model's name in the run


def log_export(tracker: JobTracker, res: ExportResult, register: str) -> str:
    """Into the active run: onnxruntime-vs-PyTorch figures, card and result files, and the ONNX model registered as
    `register`; returns the registered version ("" when the store has no model registry)."""
    import logging

    import mlflow
    import onnx

    tracker.log_metrics({k: v for k, v in {
        "torch_top1": res.torch_top1, "ort_top1": res.ort_top1, "max_abs_logit_diff": res.max_abs_logit_diff,
        "top1_agreement": res.top1_agreement, "integer_kernels": res.integer_kernels,
        "float_kernels": res.float_kernels, "n_qdq": res.n_qdq, "samples": res.samples,
        "export_seconds": res.seconds}.items() if v is not None})
    card = json.loads(res.card_json.read_text())
    tracker.log_metrics({f"model.{k}": float(v) for k, v in card["totals"].items() if isinstance(v, int | float)})
    for p in (res.card_md, res.card_json, result_path(res.path)):
        if Path(p).is_file():
            tracker.log_artifact(p, "export")
    log = logging.getLogger("mlflow")
    level = log.level
    log.setLevel(logging.ERROR)  # its notes about inferred requirements and missing signatures
    try:
        info = tracker.call(mlflow.onnx.log_model, onnx.load(str(res.path)), name=MODEL_NAME,
                            registered_model_name=register,
                            pip_requirements=[f"onnxruntime=={_version('onnxruntime')}", f"onnx=={_version('onnx')}"])
    finally:
        log.setLevel(level)
    version = getattr(info, "registered_model_version", None)
    tracker.set_tags({"export.registered_model": register, "export.version": str(version or ""),
                      "export.model_uri": str(getattr(info, "model_uri", ""))})
    return str(version or "")


def _version(package: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(package)
