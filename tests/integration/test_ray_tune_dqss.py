"""DQSS over 2 disjoint calibration subsets as Ray Tune trials, through the CLI, tracked in MLflow."""

import json

import pytest
from quantsearch.cli import main
from quantsearch.config import JobSpec
from quantsearch.data import prepare_data
from quantsearch.train import train_fp32

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.mlflow]


def test_dqss_subsets_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = JobSpec.model_validate({"data": {"name": "synthetic"}, "training": {"epochs": 2, "batch_size": 64}})
    train_fp32(spec, prepare_data(spec.data), tmp_path / "fp32", progress=False)
    out = tmp_path / "dqss"
    code = main(["dqss", "--checkpoint", str(tmp_path / "fp32" / "model.pt"), "--bits", "4", "--subsets", "2",
                 "--calib-images", "128", "--iters", "10", "--easyquant-steps", "8", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    summary = json.loads((out / "subsets.json").read_text())
    assert [t["index"] for t in summary["trials"]] == [0, 1]
    assert all(0.5 <= v["activation"] <= 1.0 for v in summary["agreement"].values())
    assert summary["combined_test_acc"] > 0.5
    assert (out / "strategy_heatmap.png").stat().st_size > 1000
    assert (out / "subset0" / "strategy.json").exists()
    assert (out / "subset1" / "strategy.json").exists()
    assert "combined strategy" in printed
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out.resolve() / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("dqss").experiment_id])
    assert {r.info.run_name for r in runs if "mlflow.parentRunId" in r.data.tags} == {"subset0", "subset1"}
    import ray

    ray.shutdown()
