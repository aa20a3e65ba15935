"""The CQAP job (files it writes, errors, the sample folder) and its MLflow side (metrics, files, the pyfunc model,
fetching a sampling run's table), on a synthetic measured table and a sqlite store under tmp_path."""

import json
import math
import socket

import numpy as np
import pytest
from quantsearch.config import JobSpec, PredictorSpec
from quantsearch.data.tables import write_rows
from quantsearch.errors import ConfigError
from quantsearch.predictor import Predictor, fit_predictor
from quantsearch.predictor.job import (
    compare_predictors,
    fit_predictor_job,
    format_comparison,
    load_sample_dir,
    summary_metrics,
)
from quantsearch.quant import get_profile
from quantsearch.quant.forms import LayerConfig, QuantForm
from quantsearch.space import SearchSpace, SubnetConfig, net_forms

LAYERS = ("l0", "l1", "l2", "l3")
SPACE = SearchSpace(LAYERS, get_profile("generic"), (("l0", 8), ("l3", 8)))
SENSITIVITY = (0.0, 0.04, 0.03, 0.0)
MACS = (100, 400, 300, 10)
SPEC = PredictorSpec(hidden=32, layers=2, epochs=80)  # small and quick; the defaults are the real-run setting


def _rows(n=90, seed=0):
    """Rows like the sample stage writes (its columns), accuracy a known function of the bits and form."""
    rng = np.random.default_rng(seed)
    forms = net_forms(SPACE)
    pins = dict(SPACE.pinned)
    rows = []
    for _ in range(n):
        f = forms[int(rng.integers(len(forms)))]
        acc = 0.9 - 0.02 * (not f.w_symmetric)
        layers, bitops = [], 0.0
        for name, s, macs in zip(LAYERS, SENSITIVITY, MACS, strict=True):
            wb, ab = pins.get(name) or int(rng.integers(2, 9)), pins.get(name) or int(rng.integers(2, 9))
            layers.append((name, LayerConfig(QuantForm(wb, f.granularity, f.w_symmetric),
                                             QuantForm(ab, "per_tensor", f.a_symmetric))))
            acc -= s * (2.0 ** (2 - wb) + 2.0 ** (2 - ab))
            bitops += macs * wb * ab
        cfg = SubnetConfig(tuple(layers))
        w, a = cfg.avg_bits()
        rows.append({"config": cfg.to_json(), "form": f.label(), "avg_w_bits": w, "avg_a_bits": a,
                     "avg_bits": (w + a) / 2, "bitops": bitops, "weight_bytes": 1.0,
                     "val_acc": float(np.clip(acc + rng.normal(0, 0.004), 0, 1)), "val_images": 256,
                     "bn_images": 128, "seed": seed})
    return rows


@pytest.fixture(scope="module")
def rows():
    return _rows()


@pytest.fixture(scope="module")
def job(rows, tmp_path_factory):
    return fit_predictor_job(rows, SPACE, SPEC, tmp_path_factory.mktemp("job") / "predictor_stage", seed=3)


# --- the job ------------------------------------------------------------------------------------------------

def test_job_writes_its_files_and_an_honest_report(job, rows):
    out = job.out_dir
    assert {p.name for p in out.iterdir()} == {"predictor", "report.json", "scatter.png", "space.json"}
    assert job.scatter_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert SearchSpace.from_dict(json.loads(job.space_path.read_text())) == SPACE
    report = json.loads(job.report_path.read_text())
    assert report == json.loads(json.dumps(job.report))  # the file is what the result says
    assert report["n_rows"] == len(rows)
    assert report["seed"] == 3
    assert report["settings"]["hidden"] == 32
    assert report["settings"]["seed"] == 3
    split = report["split_model"]
    assert split["n_train"] + split["n_heldout"] == len(rows)
    assert split["overall"]["tau"] == pytest.approx(job.fit.report.overall.tau)
    assert report["metrics"]["heldout.tau"] == pytest.approx(job.fit.report.overall.tau)
    assert report["metrics"]["heldout.tau"] > 0.5  # the synthetic accuracy is learnable
    saved = report["saved_predictor"]
    assert saved["trained_on"] == "all rows"
    assert saved["n_rows"] == len(rows)
    assert not saved["heldout_scored"]
    assert job.refit
    assert "compare" not in report
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_saved_predictor_is_the_refit_and_loads(job, rows):
    loaded = Predictor.load(job.predictor_dir)
    configs = [SubnetConfig.from_json(r["config"]) for r in rows[:20]]
    np.testing.assert_array_equal(loaded.predict(configs), job.predictor.predict(configs))
    # refit on every row: not the split model (which never saw the held-out subnets)
    assert not np.array_equal(job.predictor.predict(configs), job.fit.predictor.predict(configs))
    # same rows, settings and seed: the refit is reproducible
    again, _ = _refit(rows)
    np.testing.assert_allclose(again.predict(configs), job.predictor.predict(configs), rtol=0, atol=1e-9)


def _refit(rows):
    from quantsearch.predictor.dataset import measured_set
    from quantsearch.predictor.job import _refit_all
    from quantsearch.space.encoding import FeatureEncoder

    enc = FeatureEncoder.for_space(SPACE)
    return _refit_all(measured_set(rows, enc), enc, SPEC, 3)


def test_no_refit_saves_the_split_model_and_says_so(rows, tmp_path):
    res = fit_predictor_job(rows, SPACE, SPEC.model_copy(update={"model": "gbr"}), tmp_path / "o", seed=3,
                            refit=False)
    saved = res.report["saved_predictor"]
    assert saved["trained_on"] == "training split"
    assert saved["heldout_scored"]
    assert saved["n_rows"] == res.fit.report.n_train
    assert saved["model"] == "gbr"
    held = list(res.fit.heldout)
    np.testing.assert_array_equal(Predictor.load(res.predictor_dir).predict(held), res.fit.predicted)


def test_rerun_replaces_the_predictor_folder(rows, tmp_path):
    out = tmp_path / "o"
    fit_predictor_job(rows, SPACE, SPEC.model_copy(update={"model": "gbr"}), out, seed=1)
    (out / "predictor" / "stale.txt").write_text("old")
    res = fit_predictor_job(rows, SPACE, SPEC.model_copy(update={"model": "gbr"}), out, seed=2)
    assert not (out / "predictor" / "stale.txt").exists()
    assert Predictor.load(out / "predictor").kind == "gbr"
    assert res.report["seed"] == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_compare_fits_both_models_on_the_same_split(rows, tmp_path):
    reports = compare_predictors(rows, SPACE, SPEC.model_copy(update={"model": "gbr"}), seed=3)
    assert list(reports) == ["gbr", "mlp"]  # spec.model first
    assert reports["gbr"].n_heldout == reports["mlp"].n_heldout
    # the same held-out subnets: the proxies score identically
    assert reports["gbr"].overall.tau_bitops == reports["mlp"].overall.tau_bitops
    table = format_comparison(reports)
    assert table.splitlines()[1].startswith("gbr")
    assert "proxies" in table
    res = fit_predictor_job(rows, SPACE, SPEC, tmp_path / "o", seed=3, compare=True)
    assert set(res.compare) == {"mlp", "gbr"}
    assert list(res.report["compare"]) == ["mlp", "gbr"]
    assert res.report["compare"]["gbr"]["overall"]["tau"] == pytest.approx(reports["gbr"].overall.tau)
    assert res.report["compare"]["mlp"]["metrics"]["heldout.tau"] == pytest.approx(res.fit.report.overall.tau)
    with pytest.raises(ConfigError, match="unknown predictor model"):
        compare_predictors(rows, SPACE, SPEC, seed=3, models=["mlp", "xgb"])


def test_summary_metrics_band_means_skip_undefined_bands(job):
    m = summary_metrics(job.fit.report)
    assert m["heldout.band_tau"] == pytest.approx(job.fit.report.band_tau)
    taus = [b.tau_bitops for b in job.fit.report.bands if math.isfinite(b.tau_bitops)]
    assert m["proxy.bitops.band_tau"] == pytest.approx(np.mean(taus) if taus else math.nan, nan_ok=True)
    assert m["n_train"] == job.fit.report.n_train


def test_bad_inputs_fail_in_one_line_and_write_nothing(rows, tmp_path):
    out = tmp_path / "new" / "o"
    too_few = rows[:5]
    with pytest.raises(ConfigError, match="needs at least") as e:
        fit_predictor_job(too_few, SPACE, SPEC, out, seed=0)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="lacks column 'val_acc'"):
        fit_predictor_job([{k: v for k, v in r.items() if k != "val_acc"} for r in rows], SPACE, SPEC, out, seed=0)
    other = SearchSpace(("a", "b"), get_profile("generic"), ())
    with pytest.raises(ConfigError):
        fit_predictor_job(rows, other, SPEC, out, seed=0)
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        fit_predictor_job(rows, SPACE, SPEC, tmp_path / "file", seed=0)
    with pytest.raises(ConfigError, match="is a file"):
        fit_predictor_job(rows, SPACE, SPEC, tmp_path / "file" / "sub", seed=0)


# --- the sample folder ---------------------------------------------------------------------------------------

def _sample_dir(path, rows):
    path.mkdir(parents=True)
    write_rows(path / "measured.parquet", rows)
    (path / "space.json").write_text(json.dumps(SPACE.to_dict()))
    return path


def test_load_sample_dir_round_trip(rows, tmp_path):
    got, space = load_sample_dir(_sample_dir(tmp_path / "sample", rows))
    assert space == SPACE
    assert got == rows
    # and it feeds the job as is
    assert fit_predictor(got, SPEC.model_copy(update={"model": "gbr"}), space, seed=0).report.n_heldout > 0


def test_load_sample_dir_errors(rows, tmp_path):
    with pytest.raises(ConfigError, match="does not exist; run the sample stage"):
        load_sample_dir(tmp_path / "nowhere")
    d = _sample_dir(tmp_path / "s", rows)
    (d / "space.json").unlink()
    with pytest.raises(ConfigError, match=r"lacks space\.json"):
        load_sample_dir(d)
    (d / "space.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        load_sample_dir(d)
    (d / "space.json").write_text(json.dumps({"layer_names": ["a"], "profile": "nope", "pinned": {}}))
    with pytest.raises(ConfigError, match="unknown backend profile") as e:
        load_sample_dir(d)
    assert "\n" not in str(e.value)
    (d / "space.json").write_text(json.dumps(SPACE.to_dict()))
    (d / "measured.parquet").write_bytes(b"not parquet")
    with pytest.raises(ConfigError, match="not a readable Parquet"):
        load_sample_dir(d)
    (d / "measured.parquet").unlink()
    with pytest.raises(ConfigError, match=r"lacks measured\.parquet"):
        load_sample_dir(d)


# --- MLflow ----------------------------------------------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tracked(job, rows, tmp_path_factory):
    """A sqlite store with a job run: a 'sample' child logging the sample folder, a 'predictor' child logging `job`."""
    from quantsearch.tracking import JobTracker
    from quantsearch.tracking.predictor_tracking import log_predictor

    tmp = tmp_path_factory.mktemp("tracked")
    sample = _sample_dir(tmp / "out" / "sample", rows)
    tracker = JobTracker(JobSpec(name="cqap-job", output_dir=str(tmp / "out")))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mp.chdir(tmp)  # the sqlite store's default artifact root is relative to the working folder
        with tracker.parent():
            with tracker.child("sample") as sample_id:
                tracker.log_artifact(sample / "measured.parquet", "sample")
                tracker.log_artifact(sample / "space.json", "sample")
            with tracker.child("predictor") as predictor_id:
                model_uri = log_predictor(tracker, job)
    return {"uri": tracker.uri, "sample": sample_id, "predictor": predictor_id, "model_uri": model_uri,
            "parent": tracker.run_id}


@pytest.mark.mlflow
def test_log_predictor_metrics_files_and_pyfunc_round_trip(tracked, job, rows, monkeypatch):
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracked["uri"])
    run = client.get_run(tracked["predictor"])
    m = run.data.metrics
    assert m["heldout.tau"] == pytest.approx(job.fit.report.overall.tau)
    assert m["n_train"] == job.fit.report.n_train
    assert m["n_heldout"] == job.fit.report.n_heldout
    assert m["n_rows"] == len(rows)
    assert {"heldout.rho", "heldout.rmse", "proxy.avg_bits.tau", "proxy.bitops.tau"} <= set(m)
    assert run.data.tags["predictor.saved_trained_on"] == "all rows"
    arts = {a.path for a in client.list_artifacts(tracked["predictor"], "predictor")}
    assert arts == {"predictor/report.json", "predictor/scatter.png", "predictor/space.json"}

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked["uri"])
    mlflow.set_tracking_uri(tracked["uri"])
    model = mlflow.pyfunc.load_model(f"runs:/{tracked['predictor']}/cqap")
    configs = [SubnetConfig.from_json(r["config"]) for r in rows[:25]]
    got = np.asarray(model.predict(pd.DataFrame({"config": [c.to_json() for c in configs]})))
    np.testing.assert_array_equal(got, job.predictor.predict(configs))


@pytest.mark.mlflow
def test_predictor_from_run(tracked, job, rows, tmp_path):
    from quantsearch.tracking.predictor_tracking import predictor_from_run

    pred = predictor_from_run(tracked["uri"], tracked["predictor"], tmp_path / "fetched")
    configs = [SubnetConfig.from_json(r["config"]) for r in rows[:10]]
    np.testing.assert_array_equal(pred.predict(configs), job.predictor.predict(configs))
    assert Predictor.load(tmp_path / "fetched" / "predictor").kind == job.predictor.kind
    from quantsearch.tracking import TrackingError

    with pytest.raises(TrackingError, match=r"logged no 'cqap' model; pass the run id of a predictor stage"):
        predictor_from_run(tracked["uri"], tracked["sample"], tmp_path / "none")
    assert not (tmp_path / "none").exists()


@pytest.mark.mlflow
def test_measured_table_from_run(tracked, rows, tmp_path):
    from quantsearch.tracking import TrackingError
    from quantsearch.tracking.predictor_tracking import measured_table_from_run

    dst = measured_table_from_run(tracked["uri"], tracked["sample"], tmp_path / "fetched")
    assert sorted(p.name for p in dst.iterdir()) == ["measured.parquet", "space.json"]
    got, space = load_sample_dir(dst)
    assert got == rows
    assert space == SPACE

    with pytest.raises(TrackingError, match=r"no sample/measured\.parquet or sample/space\.json.*sampling") as e:
        measured_table_from_run(tracked["uri"], tracked["predictor"], tmp_path / "x")
    assert "\n" not in str(e.value)
    with pytest.raises(TrackingError, match=r"is not in.*sampling run's id") as e:
        measured_table_from_run(tracked["uri"], "0123456789abcdef0123456789abcdef", tmp_path / "x")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x").exists()


def test_measured_table_from_run_unreachable_or_missing_store(tmp_path):
    from quantsearch.tracking import TrackingError
    from quantsearch.tracking.predictor_tracking import measured_table_from_run

    with pytest.raises(TrackingError, match=r"unreachable.*start it"):
        measured_table_from_run(f"http://127.0.0.1:{_free_port()}", "abc", tmp_path / "x")
    with pytest.raises(TrackingError, match="no MLflow store at"):
        measured_table_from_run(f"sqlite:///{tmp_path / 'none.db'}", "abc", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "none.db").exists()
