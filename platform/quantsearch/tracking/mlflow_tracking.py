"""MLflow wrapper. Default store sqlite:///<output_dir>/mlflow.db; MLFLOW_TRACKING_URI or the spec override it."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from quantsearch.config import JobSpec
from quantsearch.errors import QuantsearchError


class TrackingError(QuantsearchError):
    """The tracking server or store cannot be used."""


def resolve_uri(spec: JobSpec) -> str:
    """The spec's tracking_uri, else MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/mlflow.db (absolute)."""
    if spec.tracking_uri:
        return spec.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(spec.output_dir).resolve() / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with one line, if an MLflow server does not answer or a local store cannot be written."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
                if resp.status != 200:
                    raise TrackingError(f"MLflow server {uri} answered {resp.status} on /health; check the server")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"MLflow server {uri} is unreachable ({reason}); start it, or unset "
                                "MLFLOW_TRACKING_URI to use the local sqlite store") from exc
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"cannot create {folder} for the MLflow store ({exc}); set tracking_uri") from exc
        if not os.access(folder, os.W_OK):
            raise TrackingError(f"{folder} is not writable for the MLflow store; set tracking_uri")
    elif uri.startswith("file:"):
        raise TrackingError("MLflow 3.17 refuses file: stores; use sqlite:///path/mlflow.db or an http server")


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict -> {'a.b': 'value'} with string values (MLflow params)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def git_commit() -> str:
    """The current git commit, or 'unknown'."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _quiet_mlflow() -> None:
    import logging

    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)


class JobTracker:
    """One parent MLflow run for a job; stages open nested child runs."""

    def __init__(self, spec: JobSpec, uri: str | None = None) -> None:
        self.spec = spec
        self.uri = uri or resolve_uri(spec)
        self.run_id: str | None = None

    @contextmanager
    def parent(self, tags: Mapping[str, str] | None = None) -> Iterator[JobTracker]:
        """Start (and end) the job's parent run, logging the flattened spec as params; as it ends, the parent's note
        links its stage runs (tracking.compare.link_parent)."""
        check_reachable(self.uri)
        _quiet_mlflow()
        import mlflow

        # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; put it back afterwards so this job's store
        # does not become the next job's (a stopped server would then fail it)
        saved = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)
        try:
            mlflow.set_experiment(self.spec.name)
            with mlflow.start_run(run_name=f"{self.spec.name}-{time.strftime('%Y%m%d-%H%M%S')}") as run:
                self.run_id = run.info.run_id
                params = flatten(self.spec.model_dump())
                items = list(params.items())
                for i in range(0, len(items), 90):  # MLflow caps params per batch
                    mlflow.log_params(dict(items[i:i + 90]))
                mlflow.set_tags({"git_commit": git_commit(), "quantsearch.job": self.spec.name, **(tags or {})})
                try:
                    yield self
                finally:
                    self._link_story()
        finally:
            if saved is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved

    def _link_story(self) -> None:
        """Best effort, as the parent ends: its note links each stage run with its figures and files
        (tracking.compare.link_parent); a failure here is one warning, never the job's failure."""
        if self.run_id is None:
            return
        try:
            from quantsearch.tracking.compare import link_parent

            link_parent(self.uri, self.run_id)
        except Exception as exc:  # the job's own result matters more than its summary
            import sys

            sys.stderr.write(f"quantsearch: warning: could not write the job's summary onto MLflow run "
                             f"{self.run_id}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n")

    @contextmanager
    def child(self, name: str, params: Mapping[str, Any] | None = None) -> Iterator[str]:
        """A nested run under the parent; yields its run id."""
        import mlflow

        with mlflow.start_run(run_name=name, nested=True) as run:
            if params:
                mlflow.log_params(flatten(params))
            yield run.info.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, run_id: str | None = None) -> None:
        """Log numeric metrics to `run_id` (default: the active run)."""
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and v == v}
        if run_id is None:
            mlflow.log_metrics(clean, step=step)
        else:
            EpochLogger(self.uri, run_id)(clean, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Attach a file to the active run."""
        import mlflow

        mlflow.log_artifact(str(path), artifact_path)


class EpochLogger:
    """Logs metrics to an existing run by id (used by rank 0 inside a Ray worker)."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri, self.run_id = uri, run_id

    def __call__(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log one batch of metrics at `step`."""
        _quiet_mlflow()
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items()
              if isinstance(v, int | float) and v == v]
        MlflowClient(self.uri).log_batch(self.run_id, metrics=ms)
