"""`quantsearch log-run DIR`: log a finished run folder to MLflow from its files on disk, as one parent run (the
job spec as params, results.json, summary and spec as artifacts) and one child run per stage folder (its metrics.json
numbers and result rows as metrics, its files as artifacts). For runs whose MLflow server was down or stopped."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantsearch.config import JobSpec, load_job, validate_spec
from quantsearch.errors import ConfigError
from quantsearch.tracking.mlflow_tracking import (
    SPEC_FILE,
    TrackingError,
    _quiet_mlflow,
    check_reachable,
    flatten,
    mask_params,
    mask_uri,
)

STAGE_DIRS = ("fp32", "qat", "dqss", "supernet", "sample", "predictor", "search", "dqss-best", "export")
_SKIP = {"mlflow.db", "ray", "stages"}  # the local store itself, Ray's trial folders, resume markers


@dataclass(frozen=True)
class LoggedRun:
    """What `log_run` created."""

    uri: str
    experiment: str
    run_id: str
    stages: tuple[str, ...]
    artifacts: int


def _spec(folder: Path, job: str | None) -> JobSpec:
    if job is not None:
        return load_job(job)
    path = folder / SPEC_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} has no {SPEC_FILE} (runs write it as they start); pass the run's spec with "
                          "--job JOB.yaml")
    try:
        return validate_spec(json.loads(path.read_text()))
    except ValueError as exc:
        raise ConfigError(f"{path} is not a job spec ({exc}); pass the run's spec with --job JOB.yaml") from exc


def _numbers(d: Any, prefix: str = "") -> dict[str, float]:
    """Finite numeric leaves of a JSON value, dotted keys (lists and bools are left out)."""
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_numbers(v, f"{prefix}{k}."))
    elif isinstance(d, int | float) and not isinstance(d, bool) and math.isfinite(d):
        out[prefix.rstrip(".")] = float(d)
    return out


def _stage_metrics(folder: Path) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name in ("metrics.json", "report.json"):
        path = folder / name
        if path.is_file():
            try:
                metrics.update(_numbers(json.loads(path.read_text())))
            except ValueError:
                continue  # not JSON: still logged as a file
    return metrics


def log_run(folder: str | Path, tracking_uri: str | None = None, job: str | None = None) -> LoggedRun:
    """Log the finished run in `folder`; returns the parent run. Nothing is logged unless the folder is a finished
    run (results.json) and the store answers."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"run folder {folder} does not exist; pass a run's output_dir")
    results = folder / "results.json"
    if not results.is_file():
        raise ConfigError(f"{folder} has no results.json, so it is not a finished run (a run writes it as it ends); "
                          "rerun `quantsearch run JOB.yaml` to finish it, then log it")
    try:
        json.loads(results.read_text())
    except ValueError as exc:
        raise ConfigError(f"{results} is damaged ({exc}); rerun `quantsearch run JOB.yaml` to rewrite it") from exc
    spec = _spec(folder, job)
    uri = tracking_uri or spec.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") \
        or f"sqlite:///{folder.resolve() / 'mlflow.db'}"
    check_reachable(uri)
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    stages = tuple(s for s in STAGE_DIRS if (folder / s).is_dir())
    try:
        exp = client.get_experiment_by_name(spec.name)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(spec.name)
        parent = client.create_run(exp_id, run_name=f"{spec.name}-relogged-{time.strftime('%Y%m%d-%H%M%S')}",
                                   tags={"quantsearch.job": spec.name, "quantsearch.relogged_from":
                                         str(folder.resolve()), "stages": ",".join(stages)})
        pid = parent.info.run_id
        items = list(mask_params(flatten(spec.model_dump())).items())
        for i in range(0, len(items), 90):  # MLflow caps params per batch
            for k, v in items[i:i + 90]:
                client.log_param(pid, k, v)
        n = 0
        for name in ("results.json", "summary.md"):  # not job.json: its URIs may hold credentials (params are masked)
            if (folder / name).is_file():
                client.log_artifact(pid, str(folder / name))
                n += 1
        for stage in stages:
            run = client.create_run(exp_id, run_name=stage, tags={"mlflow.parentRunId": pid, "stage": stage})
            rid = run.info.run_id
            metrics = _stage_metrics(folder / stage)
            marker = folder / "stages" / f"{stage}.json"  # the stage's result rows (resume marker), if any
            marked = json.loads(marker.read_text()).get("rows", []) if marker.is_file() else []
            for i, r in enumerate(marked):
                metrics.update({f"row{i}.{k}": float(v) for k, v in r.items() if k != "stage"
                                and isinstance(v, int | float) and math.isfinite(v)})
                client.set_tag(rid, f"row{i}", str(r.get("stage", "")))
            for key, value in metrics.items():
                client.log_metric(rid, key[:250], value)
            for path in sorted((folder / stage).rglob("*")):
                if path.is_file() and not (set(path.relative_to(folder).parts) & _SKIP):
                    rel = path.parent.relative_to(folder)
                    client.log_artifact(rid, str(path), str(rel))
                    n += 1
            client.set_terminated(rid)
        client.set_terminated(pid)
    except TrackingError:
        raise
    except Exception as exc:  # the store stopped answering part way: say so, the folder is unchanged
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TrackingError(f"logging {folder} to {mask_uri(uri)} failed ({first}); check the store, then run "
                            f"`quantsearch log-run {folder}` again") from exc
    return LoggedRun(uri, spec.name, pid, stages, n)
