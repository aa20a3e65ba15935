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
    # the parent tells the whole story: a linked line per stage run, with its figures and files
    note = parent.data.tags["mlflow.note.content"]
    for name, run in children.items():
        assert parent.data.tags[f"child.{name}"] == run.info.run_id
        assert f"#/experiments/{exp.experiment_id}/runs/{run.info.run_id}" in note
    assert "supernet/supernet.pt" in note
    assert parent.data.metrics["dqss.test_acc"] == pytest.approx(rows[1].test_acc)
    assert parent.data.metrics["supernet.seconds"] > 0


def test_compare_on_server(tmp_path, mlflow_server, capsys):
    """`quantsearch compare` against the server: two jobs' runs, fronts downloaded through its artifact proxy."""
    from quantsearch.cli import main

    from tests.unit.test_compare import PNG, log_job

    log_job(mlflow_server, "srv-a", tmp_path, "W3A3", 0.0)
    log_job(mlflow_server, "srv-b", tmp_path, "W4A4", 0.03, version="2")
    png = tmp_path / "fronts.png"
    assert main(["compare", "--tracking-uri", mlflow_server, "--experiment", "srv-a", "--experiment", "srv-b",
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    for needle in ("srv-a", "srv-b", "BitOps <= W3A3", "84.00 (85.00)", "87.00 (88.00)", "srv-b v2", "2 front(s)"):
        assert needle in out, needle
    assert png.read_bytes()[:8] == PNG
