"""CQAP in MLflow: fetch a sampling run's measured table, log a fitted predictor (metrics, files, pyfunc model).

The predictor is logged as an MLflow pyfunc model named "cqap": `mlflow.pyfunc.load_model("runs:/<id>/cqap")`
predicts from a pandas DataFrame whose `config` column holds SubnetConfig JSON strings. The model's artifact is
the saved predictor folder; `CQAPModel` is pickled by reference, so loading it needs quantsearch installed.
"""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import numpy.typing as npt
import pandas as pd
from mlflow.pyfunc import PythonModel

from quantsearch.errors import QuantsearchError
from quantsearch.predictor.job import (
    MEASURED_FILE,
    PREDICTOR_DIR,
    SAMPLE_ARTIFACT_PATH,
    SPACE_FILE,
    PredictorJobResult,
    load_sample_dir,
    summary_metrics,
)
from quantsearch.predictor.predictor import Predictor
from quantsearch.space.subnet import SubnetConfig
from quantsearch.tracking.mlflow_tracking import JobTracker, TrackingError, _quiet_mlflow, check_reachable

MODEL_NAME = "cqap"  # the pyfunc model's name in the run
ARTIFACT_KEY = "predictor"  # the predictor folder's key in the pyfunc model's artifacts
# what loading the pyfunc model needs (quantsearch brings the rest); pinned to what logged it
REQUIREMENTS = ("quantsearch", "mlflow", "torch", "scikit-learn", "skops", "numpy", "pandas")


class CQAPModel(PythonModel):
    """pyfunc wrapper of a saved Predictor: DataFrame with a `config` column (SubnetConfig JSON) -> accuracies."""

    def __init__(self) -> None:
        self.predictor: Predictor | None = None

    def load_context(self, context: Any) -> None:
        """Load the predictor folder logged as the model's artifact."""
        self.predictor = Predictor.load(context.artifacts[ARTIFACT_KEY])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
                ) -> npt.NDArray[np.float64]:
        """Predicted accuracy (fraction 0..1) of each row's config."""
        if self.predictor is None:
            raise RuntimeError("CQAPModel.predict before load_context")
        if "config" not in model_input.columns:
            raise QuantsearchError(f"the CQAP model reads a 'config' column of SubnetConfig JSON strings; "
                                   f"the input has {list(model_input.columns)}")
        configs = [SubnetConfig.from_json(str(text)) for text in model_input["config"]]
        return self.predictor.predict(configs)


def _requirements() -> list[str]:
    out = []
    for dist in REQUIREMENTS:
        try:
            out.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(dist)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _network_errors() -> tuple[type[BaseException], ...]:
    from mlflow.exceptions import MlflowException

    try:
        import requests

        return (MlflowException, OSError, requests.RequestException)
    except ImportError:  # pragma: no cover - mlflow depends on requests
        return (MlflowException, OSError)


def _client(tracking_uri: str) -> Any:
    """An MlflowClient on `tracking_uri` after a reachability check (a missing sqlite file is no store)."""
    check_reachable(tracking_uri)
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        raise TrackingError(f"no MLflow store at {tracking_uri[len('sqlite:///'):]}; pass the tracking URI the "
                            f"sampling run was logged to")
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def _staging(dst: str | Path, what: str) -> tuple[Path, Path]:
    """(the download folder, created; a fresh hidden staging folder inside it); a file in the way is one line."""
    out = Path(dst)
    if out.exists() and not out.is_dir():
        raise TrackingError(f"{out} is a file; choose a folder to download {what} into")
    out.mkdir(parents=True, exist_ok=True)
    return out, Path(tempfile.mkdtemp(dir=out, prefix=".download."))


def measured_table_from_run(tracking_uri: str, run_id: str, dst: str | Path) -> Path:
    """Download a sampling run's sample/measured.parquet and sample/space.json into `dst`; returns `dst`.

    The files are checked (load_sample_dir) before they land in `dst`, so `dst` never holds half a download.
    """
    client = _client(tracking_uri)
    errors = _network_errors()
    try:
        client.get_run(run_id)
    except errors as exc:
        raise TrackingError(f"MLflow run '{run_id}' is not in {tracking_uri} ({_first_line(exc)}); pass the "
                            f"sampling run's id (the MLflow UI lists it) and its tracking URI") from exc
    try:
        have = {Path(a.path).name for a in client.list_artifacts(run_id, SAMPLE_ARTIFACT_PATH) if not a.is_dir}
    except errors as exc:
        raise TrackingError(f"cannot list the artifacts of run {run_id} at {tracking_uri} ({_first_line(exc)}); "
                            f"check the tracking server and its artifact store") from exc
    missing = [f"{SAMPLE_ARTIFACT_PATH}/{n}" for n in (MEASURED_FILE, SPACE_FILE) if n not in have]
    if missing:
        raise TrackingError(f"run {run_id} has no {' or '.join(missing)}; pass the run id of a finished sampling "
                            f"stage (its run logs both)")
    out, tmp = _staging(dst, "the measured table")
    try:
        staged = tmp / SAMPLE_ARTIFACT_PATH
        staged.mkdir()
        for name in (MEASURED_FILE, SPACE_FILE):
            try:
                local = client.download_artifacts(run_id, f"{SAMPLE_ARTIFACT_PATH}/{name}", str(tmp / name))
            except errors as exc:
                raise TrackingError(f"downloading {SAMPLE_ARTIFACT_PATH}/{name} of run {run_id} failed "
                                    f"({_first_line(exc)}); check the tracking server and its artifact store"
                                    ) from exc
            Path(local).replace(staged / name)
        load_sample_dir(staged)  # a corrupt table or space fails here, before dst changes
        for name in (MEASURED_FILE, SPACE_FILE):
            (staged / name).replace(out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def log_predictor(tracker: JobTracker, result: PredictorJobResult) -> str:
    """Into the active run: held-out and proxy metrics, report/scatter/space files, and the "cqap" pyfunc model.

    Returns the logged model's URI. Metrics are the split model's held-out scores (see report.json for what the
    saved predictor was trained on); with a comparison, each model's metrics are also logged as compare.<kind>.*.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    metrics = summary_metrics(result.fit.report)
    metrics["n_rows"] = float(result.report["n_rows"])
    metrics["n_subnets"] = float(result.report["n_subnets"])
    for kind, rep in result.compare.items():
        metrics.update({f"compare.{kind}.{k}": v for k, v in summary_metrics(rep).items()})
    tracker.log_metrics(metrics)
    saved = result.report["saved_predictor"]
    tracker.set_tags({"predictor.model": result.predictor.kind, "predictor.saved_trained_on": saved["trained_on"]})
    for path in (result.report_path, result.scatter_path, result.space_path):
        tracker.log_artifact(path, PREDICTOR_DIR)
    example = pd.DataFrame({"config": [result.fit.heldout[0].to_json()]})  # a split always holds some out
    signature = ModelSignature(inputs=Schema([ColSpec("string", "config")]), outputs=Schema([ColSpec("double")]))
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)  # its warning about pickled python_model: CQAPModel pickles by reference
    try:
        info = tracker.call(mlflow.pyfunc.log_model, name=MODEL_NAME, python_model=CQAPModel(),
                                       artifacts={ARTIFACT_KEY: str(result.predictor_dir)}, signature=signature,
                                       input_example=example, pip_requirements=_requirements())
    finally:
        pyfunc_log.setLevel(level)
    return str(getattr(info, "model_uri", ""))


def _logged_model(client: Any, run_id: str, name: str) -> Any:
    """The latest LoggedModel named `name` that run `run_id` logged, or None."""
    experiment_id = client.get_run(run_id).info.experiment_id
    found, token = [], None
    while True:
        page = client.search_logged_models(experiment_ids=[experiment_id], filter_string=f"name = '{name}'",
                                           page_token=token)
        found += [m for m in page if m.source_run_id == run_id]
        token = page.token
        if not token:
            break
    return max(found, key=lambda m: m.creation_timestamp or 0) if found else None


def predictor_from_run(tracking_uri: str, run_id: str, dst: str | Path) -> Predictor:
    """Download the predictor folder of a run's "cqap" model into `dst`/predictor and load it (no pickle is read)."""
    # MLflow 3.17 resolves runs:/ and models:/ URIs of logged models with the global tracking URI, not the one
    # passed in; the logged model's own artifact location downloads with the URI given
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    client = _client(tracking_uri)
    errors = _network_errors()
    try:
        logged = _logged_model(client, run_id, MODEL_NAME)
    except errors as exc:
        raise TrackingError(f"MLflow run '{run_id}' is not in {tracking_uri} ({_first_line(exc)}); pass the "
                            f"predictor run's id and its tracking URI") from exc
    if logged is None:
        raise TrackingError(f"run {run_id} logged no '{MODEL_NAME}' model; pass the run id of a predictor stage")
    out, tmp = _staging(dst, "the predictor")
    try:
        try:
            local = Path(download_artifacts(artifact_uri=logged.artifact_location, dst_path=str(tmp),
                                            tracking_uri=tracking_uri))
            rel = Model.load(str(local)).flavors["python_function"]["artifacts"][ARTIFACT_KEY]["path"]
        except errors as exc:
            raise TrackingError(f"downloading the '{MODEL_NAME}' model of run {run_id} failed "
                                f"({_first_line(exc)}); check the tracking server and its artifact store") from exc
        except KeyError as exc:
            raise TrackingError(f"the '{MODEL_NAME}' model of run {run_id} holds no predictor folder; "
                                f"refit and log the predictor") from exc
        folder = local / rel
        predictor = Predictor.load(folder)  # CheckpointError if the folder is not a complete predictor
        final = out / PREDICTOR_DIR
        if final.exists():
            shutil.rmtree(final)
        folder.replace(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return predictor
