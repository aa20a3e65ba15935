import socket

import pytest
from quantsearch.config import JobSpec
from quantsearch.tracking import JobTracker, TrackingError, check_reachable, flatten, resolve_uri


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_resolve_uri_default_env_and_spec(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = JobSpec(output_dir=str(tmp_path / "o"))
    assert resolve_uri(spec) == f"sqlite:///{tmp_path / 'o' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert resolve_uri(spec) == "http://example:5000"
    assert resolve_uri(spec.model_copy(update={"tracking_uri": "sqlite:///x.db"})) == "sqlite:///x.db"


def test_unreachable_server_is_one_clear_error():
    with pytest.raises(TrackingError, match=r"unreachable.*start it"):
        check_reachable(f"http://127.0.0.1:{_free_port()}", timeout=2)
    with pytest.raises(TrackingError, match=r"sqlite"):
        check_reachable("file:///tmp/mlruns")


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1]}) == {"a.b": "1", "a.c.d": "None", "e": "[1]"}


@pytest.mark.mlflow
def test_parent_and_child_runs_in_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow.tracking import MlflowClient

    spec = JobSpec(name="t-job", output_dir=str(tmp_path))
    tracker = JobTracker(spec)
    art = tmp_path / "a.txt"
    art.write_text("hello")
    with tracker.parent(tags={"profile": "generic"}):
        with tracker.child("stage", {"x": {"y": 2}}) as child_id:
            tracker.log_metrics({"acc": 0.5, "nan": float("nan")}, step=1)
            tracker.log_artifact(art)
        tracker.log_metrics({"later": 1.0}, step=3, run_id=child_id)
    client = MlflowClient(tracker.uri)
    parent = client.get_run(tracker.run_id)
    assert parent.data.params["training.epochs"] == "4"
    assert parent.data.tags["profile"] == "generic"
    child = client.get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == tracker.run_id
    assert child.data.metrics == {"acc": 0.5, "later": 1.0}
    assert child.data.params["x.y"] == "2"
    assert [a.path for a in client.list_artifacts(child_id)] == ["a.txt"]


def test_unreachable_server_fails_before_training(tmp_path, capsys):
    from quantsearch.cli import main

    job = tmp_path / "job.yaml"
    job.write_text(f"name: x\noutput_dir: {tmp_path / 'out'}\ntracking_uri: http://127.0.0.1:{_free_port()}\n"
                   "data: {name: synthetic}\nsupernet: {epochs: 1}\n")
    code = main(["supernet", "train", str(job), "--local", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unreachable" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "fp32").exists()


@pytest.mark.mlflow
def test_parent_run_leaves_the_tracking_env_as_it_found_it(tmp_path, monkeypatch):
    import os

    from quantsearch.config import JobSpec
    from quantsearch.tracking import JobTracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = JobSpec.model_validate({"name": "env", "output_dir": str(tmp_path)})
    with JobTracker(spec).parent():
        pass
    assert "MLFLOW_TRACKING_URI" not in os.environ  # mlflow.set_tracking_uri exports it; the next job must not inherit
