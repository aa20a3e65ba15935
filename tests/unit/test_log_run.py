"""`quantsearch log-run DIR` re-logs a finished run folder to MLflow; a store that stops answering mid-run does not
stop the run: its results land on disk and the one-line error names log-run."""

from __future__ import annotations

import json

import pytest
import yaml
from quantsearch.cli import main

pytestmark = pytest.mark.mlflow


def _job(tmp_path, **extra):
    spec = {"name": "relog", "device": "cpu", "output_dir": str(tmp_path / "run"),
            "tracking_uri": f"sqlite:///{tmp_path / 'first.db'}",
            "data": {"name": "synthetic", "train_limit": 64}, "training": {"epochs": 1, "batch_size": 64}, **extra}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("relog")
    return client, client.search_runs([exp.experiment_id]) if exp else []


def test_store_lost_mid_run_then_log_run_relogs_the_folder(tmp_path, capsys, monkeypatch):
    import mlflow

    real = mlflow.log_metrics

    def server_gone(*args, **kwargs):  # the server stops after the parent run started
        raise ConnectionError("HTTPConnectionPool(host='mlflow', port=5000): Max retries exceeded")

    monkeypatch.setattr(mlflow, "log_metrics", server_gone)
    code = main(["run", str(_job(tmp_path)), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    monkeypatch.setattr(mlflow, "log_metrics", real)
    run = tmp_path / "run"
    assert code == 2
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    assert "stopped answering during the run (ConnectionError" in err[0]
    assert f"quantsearch log-run {run} --tracking-uri sqlite:///" in err[0]
    # the run finished on disk: results, the FP32 checkpoint and its metrics, the spec it ran with
    rows = json.loads((run / "results.json").read_text())
    assert rows[0]["stage"] == "fp32"
    assert (run / "fp32" / "model.pt").is_file()
    assert (run / "job.json").is_file()
    # a later job in this process starts clean (no run left active by the lost store)
    assert mlflow.active_run() is None

    second = f"sqlite:///{tmp_path / 'second.db'}"
    assert main(["log-run", str(run), "--tracking-uri", second]) == 0
    assert "stages: fp32" in capsys.readouterr().out
    client, runs = _runs(second)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    child = next(r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    assert parent.data.params["training.epochs"] == "1"
    assert parent.data.tags["quantsearch.relogged_from"] == str(run.resolve())
    assert child.info.run_name == "fp32"
    metrics = json.loads((run / "fp32" / "metrics.json").read_text())
    assert child.data.metrics["test_acc"] == pytest.approx(metrics["test_acc"])
    names = {a.path for a in client.list_artifacts(child.info.run_id, "fp32")}
    assert {"fp32/model.pt", "fp32/metrics.json"} <= names
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"results.json"}


def test_log_run_refuses_an_unfinished_folder_and_an_unreachable_store(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "fp32").mkdir(parents=True)
    assert main(["log-run", str(run)]) == 2
    assert "no results.json" in capsys.readouterr().err
    (run / "results.json").write_text("[]")
    assert main(["log-run", str(run)]) == 2
    assert "--job JOB.yaml" in capsys.readouterr().err
    assert main(["log-run", str(run), "--job", str(_job(tmp_path)), "--tracking-uri", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "is unreachable" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in run.iterdir()) == ["fp32", "results.json"]  # nothing written
