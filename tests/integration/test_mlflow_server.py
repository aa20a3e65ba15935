"""A whole job tracked on a real MLflow server (sqlite backend, 127.0.0.1, free port, stopped after)."""

import pytest
from quantsearch.config import JobSpec
from quantsearch.pipeline import run_job

pytestmark = [pytest.mark.slow, pytest.mark.mlflow]


def test_job_tracked_on_server(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    spec = JobSpec.model_validate({
        "name": "server-job", "output_dir": str(tmp_path / "out"), "tracking_uri": mlflow_server,
        "data": {"name": "synthetic", "val_size": 64}, "training": {"epochs": 1, "batch_size": 64},
        "supernet": {"epochs": 1, "batch_size": 64, "train_images": 128, "calib_images": 64, "bn_images": 64,
                     "init_calibrator": "maxabs", "table_bits": [8, 2]},
        "dqss": {"mode": "ptq", "config": "uniform:W4A4", "iters": 10, "calib_images": 64, "easyquant_steps": 10}})
    rows = run_job(spec, progress=False)
    assert next(r.stage for r in rows) == "fp32"
    assert any(r.config == "W2A2" for r in rows)
    assert [r.stage for r in rows][1] == "DQSS-PTQ"
    assert rows[1].config == "W4A4"
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("server-job")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"fp32", "dqss", "supernet"}
    dq = children["dqss"]
    assert dq.data.metrics["test_acc"] == pytest.approx(rows[1].test_acc)
    assert any(k.startswith("choice.") for k in dq.data.tags)
    assert dq.data.params["search.iters"] == "10"
    assert "strategy.json" in {a.path for a in client.list_artifacts(dq.info.run_id)}
    sn = children["supernet"]
    assert "val_acc_max" in sn.data.metrics
    assert "loss_min" in sn.data.metrics
    assert any(k.startswith("table.W8A8.") and k.endswith("test_acc") for k in sn.data.metrics)
    arts = {a.path for a in client.list_artifacts(sn.info.run_id, "supernet")}
    assert {"supernet/table.png", "supernet/table.parquet", "supernet/supernet.pt"} <= arts
    assert parent.data.params["supernet.epochs"] == "1"
    assert "git_commit" in parent.data.tags
