"""CQAP through a real MLflow server (sqlite backend, proxied artifact store, 127.0.0.1, free port, stopped after):
a sampling run's table fetched by run id, the predictor fitted and logged, the pyfunc model loaded back from the
server and the saved predictor fetched again, predicting what the job's predictor predicts."""

import json
import os

import numpy as np
import pytest
from quantsearch.config import JobSpec
from quantsearch.data.tables import write_rows
from quantsearch.predictor.job import fit_predictor_job, load_sample_dir
from quantsearch.space import SubnetConfig

from tests.unit.test_predictor_job import SPACE, SPEC, _rows

pytestmark = [pytest.mark.slow, pytest.mark.mlflow]


def test_predictor_from_a_sampling_run_on_a_server(tmp_path, mlflow_server, monkeypatch):
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient
    from quantsearch.tracking import JobTracker, TrackingError
    from quantsearch.tracking.predictor_tracking import log_predictor, measured_table_from_run, predictor_from_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    rows = _rows(n=120, seed=1)
    sample = tmp_path / "out" / "sample"
    sample.mkdir(parents=True)
    write_rows(sample / "measured.parquet", rows)
    (sample / "space.json").write_text(json.dumps(SPACE.to_dict()))
    tracker = JobTracker(JobSpec(name="cqap-server", output_dir=str(tmp_path / "out"), tracking_uri=mlflow_server))
    with tracker.parent(), tracker.child("sample") as sample_id:
        tracker.log_artifact(sample / "measured.parquet", "sample")
        tracker.log_artifact(sample / "space.json", "sample")
    assert "MLFLOW_TRACKING_URI" not in os.environ  # what follows finds the server by the URI it is given

    fetched = measured_table_from_run(mlflow_server, sample_id, tmp_path / "fetched")
    got, space = load_sample_dir(fetched)
    assert got == rows
    assert space == SPACE
    with pytest.raises(TrackingError, match="is not in"):
        measured_table_from_run(mlflow_server, "0" * 32, tmp_path / "x")

    result = fit_predictor_job(got, space, SPEC, tmp_path / "out" / "predictor_stage", seed=0, compare=True)
    with tracker.parent():
        with tracker.child("predictor") as predictor_id:
            log_predictor(tracker, result)
        with pytest.raises(TrackingError, match=r"no sample/measured\.parquet"):
            measured_table_from_run(mlflow_server, predictor_id, tmp_path / "x")

    client = MlflowClient(mlflow_server)
    run = client.get_run(predictor_id)
    assert run.data.metrics["heldout.tau"] == pytest.approx(result.fit.report.overall.tau)
    assert "compare.gbr.heldout.tau" in run.data.metrics
    assert {a.path for a in client.list_artifacts(predictor_id, "predictor")} == {
        "predictor/report.json", "predictor/scatter.png", "predictor/space.json"}

    configs = [SubnetConfig.from_json(r["config"]) for r in rows[:30]]
    expected = result.predictor.predict(configs)
    mlflow.set_tracking_uri(mlflow_server)
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{predictor_id}/cqap")
        got_pred = np.asarray(model.predict(pd.DataFrame({"config": [c.to_json() for c in configs]})))
    finally:
        mlflow.set_tracking_uri(None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    np.testing.assert_array_equal(got_pred, expected)
    fetched_pred = predictor_from_run(mlflow_server, predictor_id, tmp_path / "again")
    np.testing.assert_array_equal(fetched_pred.predict(configs), expected)
