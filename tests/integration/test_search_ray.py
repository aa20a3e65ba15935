"""The search half on Ray Tune and through MLflow: sampling chunks as parallel trials gives the rows an in-process
run gives; CQAP fitted from an MLflow sampling run's artifacts (`predictor fit --from-run`)."""

from __future__ import annotations

import pytest
from quantsearch.data.tables import read_rows

from tests.unit.test_search_job import _spec, trained  # noqa: F401 - the module's fixture

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.mlflow]


@pytest.fixture(scope="module", autouse=True)
def _ray_down():
    yield
    import ray

    ray.shutdown()


def test_tune_trials_measure_what_in_process_measures(trained, tmp_path):  # noqa: F811
    from quantsearch.distributed.tune_sample import tune_chunks
    from quantsearch.supernet.sample_job import context_args, sample_job

    out, data = trained
    spec = _spec(out, sample={"subnets": 6, "chunk": 2, "bn_images": 64, "seed": 11})
    local = sample_job(spec, data, tmp_path / "local")
    chunks_seen = []
    tuned = sample_job(spec, data, tmp_path / "tune", run_chunks=tune_chunks(context_args(spec), 2, tmp_path, "t"),
                       on_chunk=lambda i, rows: chunks_seen.append(len(rows)))
    assert sorted(chunks_seen) == [2, 2, 2]
    assert [r["config"] for r in tuned.rows] == [r["config"] for r in local.rows]  # the draw's order
    assert [r["val_acc"] for r in tuned.rows] == pytest.approx([r["val_acc"] for r in local.rows])
    # finalists: the same trials add test accuracy
    test_rows = next(tune_chunks(context_args(spec), 1, tmp_path, "f", test=True)([[_first(local)]]))
    assert 0 <= test_rows[0]["test_acc"] <= 1


def _first(res):
    from quantsearch.space import SubnetConfig

    return SubnetConfig.from_json(res.rows[0]["config"])


def test_predictor_fit_from_an_mlflow_sampling_run(trained, tmp_path, capsys):  # noqa: F811
    import yaml
    from mlflow.tracking import MlflowClient
    from quantsearch.cli import main

    out, _ = trained
    job_dir = tmp_path / "job"
    raw = _spec(job_dir, sample={"subnets": 14, "chunk": 7, "bn_images": 64, "workers": 2,
                                 "checkpoint": str(out / "supernet" / "supernet.pt")}).model_dump(exclude_unset=True)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(raw))
    assert main(["sample", str(job), "--quiet"]) == 0
    uri = f"sqlite:///{job_dir / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny-search")
    runs = client.search_runs([exp.experiment_id], "attributes.run_name = 'sample'")
    assert len(runs) == 1
    chunk_runs = client.search_runs([exp.experiment_id], "attributes.run_name LIKE 'chunk%'")
    assert len(chunk_runs) == 2  # one nested run per Tune trial's chunk
    other = tmp_path / "other"  # a second job that has no sample folder: its table comes from MLflow
    raw2 = {**raw, "output_dir": str(other), "tracking_uri": uri}
    job2 = tmp_path / "job2.yaml"
    job2.write_text(yaml.safe_dump(raw2))
    assert main(["predictor", "fit", str(job2), "--from-run", runs[0].info.run_id, "--quiet"]) == 0
    assert (other / "predictor" / "predictor").is_dir()
    assert len(read_rows(other / "predictor" / "from-run" / "measured.parquet")) == 14
    capsys.readouterr()
    fresh = {**raw2, "output_dir": str(tmp_path / "fresh")}
    job3 = tmp_path / "job3.yaml"
    job3.write_text(yaml.safe_dump(fresh))
    assert main(["predictor", "fit", str(job3), "--from-run", "0" * 32, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "not found" in err
    assert not (tmp_path / "fresh").exists()  # nothing written
