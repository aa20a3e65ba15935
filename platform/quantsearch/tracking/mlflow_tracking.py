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
                    raise TrackingError(f"MLflow server {mask_uri(uri)} answered {resp.status} on /health; check the "
                                        "server")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"MLflow server {mask_uri(uri)} is unreachable ({reason}); start it, or unset "
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


SPEC_FILE = "job.json"  # the spec a run ran with, in its output folder (what `quantsearch log-run` logs)


class JobTracker:
    """One parent MLflow run for a job; stages open nested child runs.

    A store that stops answering after the parent started does not stop the job: the first failed call is
    remembered, later calls are skipped, the stages finish and write their files, and as the parent ends the job
    fails with one line naming `quantsearch log-run` to log the finished folder."""

    def __init__(self, spec: JobSpec, uri: str | None = None) -> None:
        self.spec = spec
        self.uri = uri or resolve_uri(spec)
        self.run_id: str | None = None
        self.lost: str | None = None  # why the store stopped answering, once it has

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """An MLflow call; a failure (server gone) marks the store lost instead of failing the stage."""
        if self.lost is not None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # requests, MlflowException, sqlalchemy: any failure means the store is gone
            self.lost = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            return None

    @contextmanager
    def parent(self, tags: Mapping[str, str] | None = None) -> Iterator[JobTracker]:
        """Start (and end) the job's parent run, logging the flattened spec as params; as it ends, the parent's note
        links its stage runs (tracking.compare.link_parent)."""
        check_reachable(self.uri)
        _quiet_mlflow()
        import mlflow

        from quantsearch._util import atomic_write_json

        atomic_write_json(Path(self.spec.output_dir) / SPEC_FILE, self.spec.model_dump(mode="json", exclude_unset=True))
        # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; put it back afterwards so this job's store
        # does not become the next job's (a stopped server would then fail it)
        saved = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)
        try:
            mlflow.set_experiment(self.spec.name)
            run = mlflow.start_run(run_name=f"{self.spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")
            self.run_id = run.info.run_id
            params = mask_params(flatten(self.spec.model_dump()))
            items = list(params.items())
            for i in range(0, len(items), 90):  # MLflow caps params per batch
                mlflow.log_params(dict(items[i:i + 90]))
            mlflow.set_tags({"git_commit": git_commit(), "quantsearch.job": self.spec.name, **(tags or {})})
            try:
                yield self
            except BaseException:
                if self.lost is None:
                    self._link_story()
                self._end("FAILED")
                raise
            if self.lost is None:
                self._link_story()
            self._end("FINISHED")
            if self.lost is not None:
                raise TrackingError(
                    f"MLflow at {self.uri} stopped answering during the run ({self.lost}); the run finished and its "
                    f"results are complete in {self.spec.output_dir}: log them with `quantsearch log-run "
                    f"{self.spec.output_dir} --tracking-uri {mask_uri(self.uri)}` once the server is back")
        finally:
            if saved is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved

    def _end(self, status: str) -> None:
        """End every run this job left open (the parent, a child a failure interrupted), even with the store gone."""
        import mlflow

        while mlflow.active_run() is not None:
            if self._call(mlflow.end_run, status) is None and self.lost is not None:
                _drop_active_runs()
                return

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
        """A nested run under the parent; yields its run id ("" once the store is lost)."""
        import mlflow

        run = self._call(mlflow.start_run, run_name=name, nested=True)
        if run is None:
            yield ""
            return
        if params:
            self._call(mlflow.log_params, flatten(params))
        try:
            yield run.info.run_id
        except BaseException:
            self._call(mlflow.end_run, "FAILED")
            raise
        if self._call(mlflow.end_run) is None and self.lost is not None:
            _drop_active_runs()

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log flattened params to the active run."""
        import mlflow

        self._call(mlflow.log_params, flatten(params))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags on the active run."""
        import mlflow

        self._call(mlflow.set_tags, dict(tags))

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Any other MLflow call (log_model, ...), skipped once the store is lost; its result or None."""
        return self._call(fn, *args, **kwargs)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, run_id: str | None = None) -> None:
        """Log numeric metrics to `run_id` (default: the active run)."""
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and v == v}
        if run_id is None:
            self._call(mlflow.log_metrics, clean, step=step)
        elif run_id:
            self._call(EpochLogger(self.uri, run_id), clean, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Attach a file to the active run."""
        import mlflow

        self._call(mlflow.log_artifact, str(path), artifact_path)


def _drop_active_runs() -> None:
    """Forget the runs MLflow still counts as active after the store went away (end_run failed before popping
    them), so that the next job in this process starts clean."""
    from mlflow.tracking import fluent

    stack = fluent._active_run_stack.get()
    stack.clear()


_SECRET_KEYS = ("password", "passwd", "secret", "token", "api_key", "apikey", "access_key", "credential")


def mask_params(params: Mapping[str, str]) -> dict[str, str]:
    """Params as logged: credentials in URIs masked, values of secret-looking keys replaced by ***."""
    return {k: "***" if any(s in k.lower() for s in _SECRET_KEYS) else mask_uri(v) for k, v in params.items()}


def mask_uri(uri: str) -> str:
    """The URI with any user:password@ credentials masked, as it may appear in logs and messages."""
    import re

    return re.sub(r"(://)[^/@\s]+@", r"\1***@", uri)


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
