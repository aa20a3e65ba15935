"""Resumable runs: a stage is skipped on a rerun when its marker holds the same key and its outputs exist.

A stage's key is a content hash of the spec sections that decide its result, the files it reads from outside this
run, and the tokens of the stages of this run it reads from. A stage's token is a hash of its outputs, taken when
it finished: a stage rerun that writes the same files leaves its readers up to date, one that writes different
files makes them stale. Markers live in <output_dir>/stages/<stage>.json and are written only after a stage has
finished, so a killed run reruns the stage it was in (stages resume inside themselves where they can: supernet
epochs, sampling chunks, the search archive)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantsearch._util import atomic_write_json
from quantsearch.config import JobSpec, SampleSpec, SupernetSpec

MARKER_DIR = "stages"
_COMMON = ("seed", "device", "data", "model")
_NOT_RESULTS = {"workers", "address"}  # how many Ray workers measure decides speed, not the figures


@dataclass(frozen=True)
class StageInputs:
    """What decides a stage's result and what it writes."""

    stage: str
    sections: dict[str, Any]
    files: tuple[Path, ...] = ()
    upstream: tuple[str, ...] = ()
    outputs: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Marker:
    """A finished stage: its key and token, its result rows and the MLflow parent run that made it."""

    stage: str
    key: str
    token: str
    rows: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)
    finished: str = ""
    mlflow_run_id: str | None = None


def _dump(section: Any) -> Any:
    if section is None:
        return None
    return {k: v for k, v in section.model_dump(mode="json").items() if k not in _NOT_RESULTS}


def _own_or_file(path: Path, own: Path, stage: str) -> tuple[tuple[str, ...], tuple[Path, ...]]:
    """A stage of this run when `path` is what that stage writes, else the file itself."""
    return ((stage,), ()) if path.absolute() == own.absolute() else ((), (path,))


def stage_inputs(spec: JobSpec, stage: str, from_run: str | None = None) -> StageInputs:
    """The inputs and outputs of one stage of `spec`."""
    from quantsearch.supernet.sample_job import supernet_checkpoint

    out = Path(spec.output_dir)
    common = {k: _dump(getattr(spec, k)) if k in ("data", "model") else getattr(spec, k) for k in _COMMON}
    own_fp32 = out / "fp32" / "model.pt"
    sa = spec.sample or SampleSpec()
    own_sn = out / "supernet" / "supernet.pt"
    sn_up, sn_files = _own_or_file(supernet_checkpoint(spec, sa.checkpoint), own_sn, "supernet")
    if stage == "fp32":
        return StageInputs(stage, {**common, "training": _dump(spec.training)}, outputs=(own_fp32,))
    if stage in ("qat", "dqss", "supernet"):
        up, files = _own_or_file(spec.fp32_checkpoint(stage), own_fp32, "fp32")
        section = getattr(spec, stage) if stage != "supernet" else (spec.supernet or SupernetSpec())
        sections = {**common, stage: _dump(section)}
        if stage == "supernet":
            sections |= {"training": _dump(spec.training), "scaling": _dump(spec.scaling)}
            return StageInputs(stage, sections, files, up, (own_sn,))
        if stage == "qat":
            sections["training"] = _dump(spec.training)
            return StageInputs(stage, sections, files, up, (out / "qat" / "model.pt",))
        dq = spec.dqss
        assert dq is not None
        if not dq.target.config.startswith("uniform:") and Path(dq.target.config).is_file():
            files += (Path(dq.target.config),)  # a subnet file's per-layer bits
        made = (out / "dqss",) if dq.subsets else (out / "dqss" / "strategy.json",)
        return StageInputs(stage, sections, files, up, made)
    if stage == "sample":
        return StageInputs(stage, {**common, "sample": _dump(sa)}, sn_files, sn_up,
                           (out / "sample" / "measured.parquet", out / "sample" / "space.json"))
    if stage == "predictor":
        return StageInputs(stage, {**common, "predictor": _dump(spec.predictor), "from_run": from_run},
                           upstream=() if from_run else ("sample",),
                           outputs=(out / "predictor" / "predictor", out / "predictor" / "report.json"))
    if stage == "search":
        ss = spec.search
        # the measured table is an input only where a sample stage made it (measured fitness appends to it)
        up = sn_up + (("sample",) if spec.sample is not None else ()) \
            + (("predictor",) if ss is not None and ss.fitness == "predictor" else ())
        sections = {**common, "search": _dump(ss), "sample": _dump(sa)}
        outputs: tuple[Path, ...] = (out / "search" / "best.json",)
        files = sn_files
        if ss is not None and ss.dqss:
            sections["dqss"] = _dump(spec.dqss)
            fp_up, fp_files = _own_or_file(spec.fp32_checkpoint("dqss"), own_fp32, "fp32")
            up, files = up + fp_up, files + fp_files
            outputs = (*outputs, out / "dqss-best" / "strategy.json")
        return StageInputs(stage, sections, files, up, outputs)
    if stage == "export":
        from quantsearch.stages import export_plan

        plan = export_plan(spec)
        files = tuple(p for p in (plan.checkpoint, plan.subnet, plan.strategy) if p is not None
                      and not p.absolute().is_relative_to(out.absolute()))
        return StageInputs(stage, {**common, "export": _dump(spec.export), "sample": _dump(sa)}, files,
                           (plan.producer,), (out / "export" / "model.onnx",))
    raise ValueError(f"unknown stage {stage!r}")


def _hash_into(h: Any, path: Path) -> None:
    """Feed a file's bytes, or a folder's files (sorted, with their relative names), into `h`."""
    if path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode())
            _hash_into(h, p)
    elif path.is_file():
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    else:
        h.update(b"<absent>")


def content_hash(paths: tuple[Path, ...]) -> str:
    """sha256 over the contents of files and folders (absent ones count as absent)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        _hash_into(h, p)
    return h.hexdigest()


def marker_path(output_dir: str | Path, stage: str) -> Path:
    """Where a stage's marker lives."""
    return Path(output_dir) / MARKER_DIR / f"{stage}.json"


def load_marker(output_dir: str | Path, stage: str) -> Marker | None:
    """The stage's marker, or None when there is none (or it cannot be read: the stage then reruns)."""
    path = marker_path(output_dir, stage)
    try:
        raw = json.loads(path.read_text())
        return Marker(**raw)
    except (OSError, ValueError, TypeError):
        return None


def upstream_token(spec: JobSpec, stage: str) -> str:
    """The token of a stage this one reads: from its marker, else a hash of what it wrote (a run made before
    markers existed, or a stage run by hand)."""
    marker = load_marker(spec.output_dir, stage)
    if marker is not None:
        return marker.token
    return content_hash(stage_inputs(spec, stage).outputs)


def stage_key(spec: JobSpec, inputs: StageInputs) -> str:
    """The content hash that decides whether a finished stage is still up to date."""
    blob = {"stage": inputs.stage, "sections": inputs.sections,
            "files": {str(p): content_hash((p,)) for p in inputs.files},
            "upstream": {s: upstream_token(spec, s) for s in inputs.upstream}}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def up_to_date(marker: Marker | None, key: str, inputs: StageInputs) -> bool:
    """True when the marker was made from the same inputs and every output is still there."""
    return marker is not None and marker.key == key and all(p.exists() for p in inputs.outputs)


def write_marker(spec: JobSpec, inputs: StageInputs, key: str, rows: list[dict[str, Any]],
                 extra: dict[str, Any] | None = None, mlflow_run_id: str | None = None) -> Marker:
    """Record a finished stage (atomically, after its outputs are written)."""
    marker = Marker(inputs.stage, key, content_hash(inputs.outputs), rows, extra or {},
                    time.strftime("%Y-%m-%dT%H:%M:%S"), mlflow_run_id)
    atomic_write_json(marker_path(spec.output_dir, inputs.stage), marker.__dict__)
    return marker
