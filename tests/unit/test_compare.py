"""`quantsearch compare` on a sqlite store: two jobs' parent runs (fp32, search with its front, export), the table
built with mlflow.search_runs, the overlaid Pareto fronts, and the story each parent run tells (links to its stage
runs, their figures and files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from quantsearch.cli import main
from quantsearch.config import JobSpec
from quantsearch.data.tables import write_rows
from quantsearch.tracking import JobTracker

pytestmark = pytest.mark.mlflow

PNG = b"\x89PNG\r\n\x1a\n"


def _front(shift: float) -> list[dict]:
    """Four evaluated points, three on the front, two of them measured (test) as finalists."""
    pts = [(1e6, 0.70), (2e6, 0.80), (4e6, 0.86), (3e6, 0.75)]
    return [{"generation": 0, "accuracy": a + shift, "bitops": b, "weight_bytes": b / 100, "avg_bits": 4.0,
             "feasible": True, "on_front": i < 3, "uniform": "", "summary": f"p{i}", "config": "{}",
             "measured_val_acc": (a + shift - 0.01) if i in (1, 2) else None,
             "measured_test_acc": (a + shift - 0.02) if i in (1, 2) else None} for i, (b, a) in enumerate(pts)]


def log_job(uri: str, name: str, tmp: Path, budget: str, shift: float, version: str = "1") -> str:
    """A job's runs as the pipeline leaves them: parent + fp32, search (budget, best.*, front), export tags.
    Returns the parent run id."""
    import mlflow

    spec = JobSpec.model_validate({"name": name, "output_dir": str(tmp / name), "tracking_uri": uri,
                                   "data": {"name": "synthetic"}, "model": {"name": "resnet8"}})
    tracker = JobTracker(spec)
    front = write_rows(tmp / f"{name}-front" / "front.parquet", _front(shift))
    with tracker.parent(tags={"profile": "generic", "stages": "fp32,search,export"}):
        with tracker.child("fp32"):
            tracker.log_metrics({"val_acc": 0.9, "test_acc": 0.89 + shift})
        with tracker.child("search", {"search": {"budget": {"bitops": budget, "weight_bytes": None,
                                                            "avg_bits": None}}}):
            tracker.log_metrics({"best.val_acc": 0.85 + shift, "best.test_acc": 0.84 + shift,
                                 "best.predicted_acc": 0.86, "best.bitops": 4e6, "best.weight_bytes": 4e4})
            tracker.log_artifact(front, "search")
        with tracker.child("export"):
            tracker.log_metrics({"ort_top1": 84.0})
            mlflow.set_tags({"export.registered_model": name, "export.version": version})
    assert tracker.run_id is not None
    return tracker.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    ids = {"job-a": log_job(uri, "job-a", tmp, "W3A3", 0.0),
           "job-b": log_job(uri, "job-b", tmp, "W4A4", 0.03, version="2")}
    return uri, tmp, ids


def test_summaries_from_search_runs(store):
    from quantsearch.tracking.compare import job_summaries

    uri, _, ids = store
    jobs = job_summaries(uri, metrics=["fp32.test_acc", "export.ort_top1", "nope.x"])
    assert [j.job for j in jobs] == ["job-b", "job-a"]  # newest first
    b = jobs[0]
    assert b.run_id == ids["job-b"]
    assert (b.model, b.data, b.stages) == ("resnet8", "synthetic", ("fp32", "search", "export"))
    assert b.budget == "BitOps <= W4A4"
    assert b.best_test_acc == pytest.approx(0.87)
    assert b.best_val_acc == pytest.approx(0.88)
    assert (b.bitops, b.weight_bytes) == (4e6, 4e4)
    assert (b.export_model, b.export_version) == ("job-b", "2")
    assert [c.name for c in b.children] == ["fp32", "search", "export"]
    assert set(b.stage_seconds()) == {"fp32", "search", "export"}
    assert b.extra == {"fp32.test_acc": pytest.approx(0.92), "export.ort_top1": 84.0, "nope.x": None}
    only_a = job_summaries(uri, ["job-a"])
    assert [j.job for j in only_a] == ["job-a"]


def test_compare_cli_table_plot_and_json(store, tmp_path, capsys):
    import json

    uri, _, _ = store
    png, js = tmp_path / "fronts.png", tmp_path / "rows.json"
    assert main(["compare", "--tracking-uri", uri, "--metric", "fp32.test_acc", "--plot", str(png),
                 "--json", str(js)]) == 0
    out = capsys.readouterr().out
    for needle in ("job-a", "job-b", "resnet8", "synthetic", "fp32,search,export", "BitOps <= W3A3",
                   "BitOps <= W4A4", "84.00 (85.00)", "87.00 (88.00)", "4.0", "job-a v1", "job-b v2",
                   "fp32.test_acc", "2 front(s)"):
        assert needle in out, needle
    assert png.read_bytes()[:8] == PNG
    rows = json.loads(js.read_text())
    assert [r["job"] for r in rows] == ["job-b", "job-a"]
    assert rows[0]["children"][1]["metrics"]["best.test_acc"] == pytest.approx(0.87)


def test_fronts_png_overlays_each_front(store, tmp_path):
    from quantsearch.tracking.compare import fronts, fronts_png, job_summaries

    uri, _, _ = store
    items = fronts(uri, job_summaries(uri))
    assert len(items) == 2
    assert [int(df["on_front"].sum()) for _, df in items] == [3, 3]
    assert fronts_png(items, tmp_path / "f.png").read_bytes()[:8] == PNG
    assert fronts_png([], tmp_path / "none.png").read_bytes()[:8] == PNG  # an empty plot says so


def test_parent_run_links_its_stage_runs_and_files(store):
    from mlflow.tracking import MlflowClient
    from quantsearch.tracking.compare import run_link

    uri, _, ids = store
    client = MlflowClient(uri)
    parent = client.get_run(ids["job-a"])
    children = {r.info.run_name: r for r in client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{ids['job-a']}'")}
    assert set(children) == {"fp32", "search", "export"}
    tags, metrics = parent.data.tags, parent.data.metrics
    for name, run in children.items():
        assert tags[f"child.{name}"] == run.info.run_id
    note = tags["mlflow.note.content"]
    search_id = children["search"].info.run_id
    assert run_link(parent.info.experiment_id, search_id) in note
    assert "search/front.parquet" in note
    assert "best test 84.00 %" in note
    assert "onnxruntime top-1 84.00 %" in note
    assert "models:/job-a/1" in note
    assert metrics["search.best.test_acc"] == pytest.approx(0.84)
    assert metrics["fp32.test_acc"] == pytest.approx(0.89)
    assert "search.seconds" in metrics
    assert (tags["export.registered_model"], tags["export.version"]) == ("job-a", "1")


def test_compare_job_spec_uses_its_store_and_name(store, tmp_path, capsys):
    uri, tmp, _ = store
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "job-a", "output_dir": str(tmp / "job-a"), "tracking_uri": uri}))
    assert main(["compare", "--job", str(job)]) == 0
    out = capsys.readouterr().out
    assert "job-a" in out
    assert "job-b" not in out


@pytest.mark.parametrize(("argv", "needle"), [
    (["compare", "--tracking-uri", "sqlite:///STORE", "--experiment", "nope"], "no MLflow experiment named 'nope'"),
    (["compare", "--tracking-uri", "sqlite:///MISSING/x.db"], "no MLflow store"),
    (["compare", "--tracking-uri", "sqlite:///STORE", "--plot", "OUT/fronts.jpg"], "must name a .png"),
    (["compare"], "compare needs a store"),
])
def test_compare_errors_are_one_line(store, tmp_path, monkeypatch, capsys, argv, needle):
    uri, _, _ = store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv = [a.replace("sqlite:///STORE", uri).replace("MISSING", str(tmp_path / "missing"))
            .replace("OUT", str(tmp_path / "out")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert needle in err
    assert not (tmp_path / "out").exists()
