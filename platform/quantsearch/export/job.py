"""The export job: a quantized result on disk (a QAT/PTQ/DQSS checkpoint, a DQSS strategy file, or a supernet
checkpoint + a SubnetConfig) -> model.onnx, its model card and export.json, checked on the test split.

`load_source` rebuilds the model exactly as the stage that made it measured it (a subnet gets the same BN
recalibration the search measured it with), so the exported top-1 can be compared with the figure that chose it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantsearch._util import atomic_write_json
from quantsearch.config import QuantTarget, check_config_string
from quantsearch.data import ArrayBatches, PreparedData, take
from quantsearch.errors import ConfigError
from quantsearch.export.exporter import ExportResult, export_onnx
from quantsearch.space import load_model, resolve_config, set_config
from quantsearch.train.checkpoint import load_checkpoint


@dataclass(frozen=True)
class ExportSource:
    """A quantized model ready to export, what set its scales (for the card), and where it came from."""

    model: nn.Module
    calibration: Any
    label: str
    dataset: str


def _as_config(subnet: str) -> str:
    """A SubnetConfig JSON path, or a uniform config ('W4A4' or 'uniform:W4A4')."""
    if subnet.lower().endswith(".json"):
        if not Path(subnet).is_file():
            raise ConfigError(f"subnet file {subnet} does not exist; pass a search's best.json or a config like W4A4")
        return subnet
    config = subnet if subnet.startswith("uniform:") else f"uniform:{subnet}"
    try:
        check_config_string(config)
    except ConfigError as exc:
        raise ConfigError(f"subnet {subnet}: {exc}") from exc
    return config


def _subnet_of(ckpt: dict[str, Any], path: Path, subnet: str, data: PreparedData | None, bn_images: int,
               seed: int) -> ExportSource:
    """A supernet checkpoint + a config: the subnet with its BN statistics recalibrated as `quantsearch sample`
    and `search` measure it (the same `bn_images` training images for the same `seed`)."""
    from quantsearch.supernet.bn import bn_batches, recalibrate_bn

    if data is None:
        raise ConfigError("exporting a supernet's subnet recalibrates BN on training images: pass the data")
    model = load_model(ckpt)
    cfg = resolve_config(QuantTarget(config=_as_config(subnet), profile=ckpt["profile"]), model)
    set_config(model, cfg)
    recalibrate_bn(model, bn_batches(data, bn_images, seed), bn_images)
    return ExportSource(model.eval(), "lsq", f"supernet {path} subnet {subnet}", ckpt["dataset"])


def load_source(checkpoint: str | Path | None, *, subnet: str | None = None, strategy: str | Path | None = None,
                data: PreparedData | None = None, bn_images: int = 512, seed: int = 0) -> ExportSource:
    """The quantized model a checkpoint (+ a subnet config or a DQSS strategy file) describes, in eval mode on CPU.

    - `strategy`: a DQSS strategy.json (weights: `checkpoint`, else the file's own);
    - `checkpoint` of a supernet + `subnet` (a SubnetConfig JSON such as a search's best.json, or 'W4A4');
    - `checkpoint` alone: a QAT, PTQ (`quantsearch calibrate`) or DQSS model.pt."""
    if strategy is not None:
        from quantsearch.dqss import Strategy, build_from_strategy, strategy_weights

        if subnet is not None:
            raise ConfigError("pass --strategy or --subnet, not both: a strategy file holds its own config")
        st = Strategy.load(strategy)
        weights = Path(checkpoint) if checkpoint is not None else strategy_weights(strategy, st)
        model = build_from_strategy(strategy, weights)
        ck = load_checkpoint(weights)
        return ExportSource(model.eval(), st, f"DQSS-{st.mode.upper()} strategy {strategy}", ck["dataset"])
    if checkpoint is None:
        raise ConfigError("export needs --checkpoint MODEL.pt (with --subnet for a supernet) or --strategy FILE")
    path = Path(checkpoint)
    ckpt = load_checkpoint(path)
    kind = ckpt["kind"]
    if kind == "supernet":
        if subnet is None:
            raise ConfigError(f"{path} is a supernet: pass --subnet best.json (a searched subnet) or a config such "
                              "as --subnet W4A4")
        return _subnet_of(ckpt, path, subnet, data, bn_images, seed)
    if subnet is not None:
        raise ConfigError(f"--subnet picks a subnet of a supernet, but {path} is a '{kind}' checkpoint; drop --subnet")
    if kind == "fp32":
        raise ConfigError(f"{path} is an FP32 checkpoint with no quantization to export: quantize it first "
                          "(`quantsearch qat`, `calibrate` or `dqss`) and export that, or pass --strategy")
    model = load_model(ckpt)
    calibration: Any = {"qat": "lsq", "dqss": "dqss"}.get(kind)
    if kind == "ptq":
        a, _, w = str(ckpt["method"]).partition("/")
        calibration = (a, w or a)
    beside = path.parent / "strategy.json"
    if kind == "dqss" and beside.is_file():
        from quantsearch.dqss import Strategy

        calibration = Strategy.load(beside)
    return ExportSource(model.eval(), calibration, f"{kind} checkpoint {path}", ckpt["dataset"])


def export_model(source: ExportSource, data: PreparedData, out: str | Path, *, profile: str | None = None,
                 opset: int = 21, check_images: int | None = None, top1_tol: float = 0.1, logit_tol: float = 0.1,
                 seed: int = 0, calib_images: int = 1024, provenance: dict[str, Any] | None = None) -> ExportResult:
    """Export `source` to `out` (ONNX QDQ + model card), checked in onnxruntime on the test split (all of it, or
    `check_images` of it); writes <stem>.export.json beside the model with what was measured. `calib_images`
    training images (seed + 1, as the calibration stages draw them) set the scales of the output quantization
    points that let W8A8 convs feeding a residual Add run as integer kernels (0: none, those convs stay float).
    `provenance` (the job spec, the MLflow run) goes into the model card beside the source."""
    if source.dataset != data.bundle.name:
        raise ConfigError(f"the model was trained on {source.dataset} but the data is {data.bundle.name}; check on "
                          f"the data it was trained on (--data {source.dataset})")
    split = data.test if check_images is None else take(data.test, min(check_images, len(data.test)), seed)
    if calib_images < 0:
        raise ConfigError(f"calib_images must be >= 0, got {calib_images}; pass e.g. 1024 (0: no output calibration)")
    batches = ArrayBatches(split, 256, data.mean, data.std)
    calib = None if calib_images == 0 else ArrayBatches(take(data.train, calib_images, seed + 1), 256, data.mean,
                                                          data.std)
    model = source.model.to(torch.device("cpu"))
    res = export_onnx(model, data.example(seed), out, profile=profile, check_batches=batches, opset=opset,
                      calibration=source.calibration, top1_tol=top1_tol, logit_tol=logit_tol, calib_batches=calib,
                      provenance={"source": source.label, "dataset": data.bundle.name, **(provenance or {})})
    atomic_write_json(result_path(res.path), {**res.to_dict(), "source": source.label, "dataset": data.bundle.name,
                                              "split": "test", "profile": profile})
    return res


def result_path(model_path: str | Path) -> Path:
    """<stem>.export.json beside an exported model."""
    p = Path(model_path)
    return p.with_name(f"{p.stem}.export.json")
