"""`quantsearch submit` and `quantsearch jobs ...` against a stand-in for Ray's JobSubmissionClient (what is sent:
entrypoint, runtime env with the spec, env vars; what is printed), and the one-line errors (bad spec, unreachable
address) before anything reaches a cluster. The real cluster: tests/integration/test_ray_cluster.py."""

from __future__ import annotations

import socket
import types
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from quantsearch.cli import main
from quantsearch.distributed import jobs


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeClient:
    """Records what the CLI asks of the Jobs API; one job, raysubmit_1, that has succeeded."""

    calls: ClassVar[list[tuple[str, object]]] = []
    seen_spec: ClassVar[dict | None] = None

    def __init__(self, address):
        self.address = address
        FakeClient.calls.append(("init", address))

    def submit_job(self, **kw):
        FakeClient.calls.append(("submit", kw))
        FakeClient.seen_spec = yaml.safe_load((Path(kw["runtime_env"]["working_dir"]) / jobs.SPEC_FILE).read_text())
        return kw.get("submission_id") or "raysubmit_1"

    def _details(self, job_id):
        if job_id != "raysubmit_1":
            raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist.")
        return types.SimpleNamespace(submission_id=job_id, job_id="02000000", status="SUCCEEDED",
                                     entrypoint="python -m quantsearch run job.yaml", message="Job finished.",
                                     start_time=1_000_000, end_time=1_042_000, metadata={"quantsearch.job": "t"})

    def get_job_info(self, job_id):
        return self._details(job_id)

    def list_jobs(self):
        return [self._details("raysubmit_1")]

    def get_job_logs(self, job_id):
        self._details(job_id)
        return "fp32 epoch 1/1\n"

    async def tail_job_logs(self, job_id):
        self._details(job_id)
        for chunk in ("fp32 epoch 1/1\n", "done\n"):
            yield chunk

    def stop_job(self, job_id):
        self._details(job_id)
        return False


@pytest.fixture
def fake(monkeypatch):
    import ray.job_submission

    FakeClient.calls = []
    FakeClient.seen_spec = None
    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", FakeClient)
    monkeypatch.delenv("RAY_JOBS_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return FakeClient


def _job(tmp_path, **extra):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "t", "output_dir": "runs/t", "data": {"name": "synthetic"},
                                   "supernet": {"epochs": 1}, "scaling": {"workers": 2, "storage_path": "ray-store"},
                                   **extra}))
    return job


def test_submit_sends_the_spec_env_and_entrypoint(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    code = main(["submit", str(_job(tmp_path)), "--address", "127.0.0.1:8265", "--set", "training.epochs=1",
                 "--env", "FOO=bar", "--submission-id", "my-job"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.strip() == "my-job"
    assert "quantsearch jobs logs my-job --follow --address http://127.0.0.1:8265" in err
    assert ("init", "http://127.0.0.1:8265") in fake.calls
    kw = next(v for k, v in fake.calls if k == "submit")
    assert kw["entrypoint"] == "python -m quantsearch run job.yaml"
    assert kw["submission_id"] == "my-job"
    assert kw["runtime_env"]["env_vars"] == {"RAY_AUTH_MODE": "disabled", "FOO": "bar",
                                             "MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    assert kw["metadata"] == {"quantsearch.job": "t"}
    assert not Path(kw["runtime_env"]["working_dir"]).exists()  # staged, uploaded, removed
    spec = fake.seen_spec
    assert spec["output_dir"] == str(tmp_path / "runs" / "t")  # relative paths resolved where submitted
    assert spec["scaling"] == {"workers": 2, "storage_path": str(tmp_path / "ray-store")}
    assert spec["training"] == {"epochs": 1}  # the override travels; defaults stay unset
    assert "qat" not in spec


def test_submit_follow_streams_logs_and_reports_the_end(fake, tmp_path, capsys):
    code = main(["submit", str(_job(tmp_path)), "--follow", "--python", "/opt/venv/bin/python"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.splitlines() == ["raysubmit_1", "fp32 epoch 1/1", "done"]
    assert "job raysubmit_1 SUCCEEDED after 42s" in err
    kw = next(v for k, v in fake.calls if k == "submit")
    assert kw["entrypoint"] == "/opt/venv/bin/python -m quantsearch run job.yaml"
    assert ("init", jobs.DEFAULT_ADDRESS) in fake.calls


def test_jobs_list_status_logs_stop(fake, capsys):
    assert main(["jobs", "list", "--address", "http://h:8265"]) == 0
    out = capsys.readouterr().out
    assert "raysubmit_1" in out
    assert "SUCCEEDED" in out
    assert main(["jobs", "status", "raysubmit_1"]) == 0
    assert capsys.readouterr().out.strip() == "raysubmit_1 SUCCEEDED (42s): Job finished."
    assert main(["jobs", "logs", "raysubmit_1"]) == 0
    assert capsys.readouterr().out == "fp32 epoch 1/1\n"
    assert main(["jobs", "logs", "raysubmit_1", "--follow"]) == 0
    assert capsys.readouterr().out == "fp32 epoch 1/1\ndone\n"
    assert main(["jobs", "stop", "raysubmit_1"]) == 0
    assert capsys.readouterr().out.strip() == "raysubmit_1 was not running (SUCCEEDED)"


def test_unknown_job_id_is_one_line(fake, capsys):
    assert main(["jobs", "status", "raysubmit_nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no such job" in err
    assert "jobs list" in err


def test_unreachable_address_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_JOBS_ADDRESS", raising=False)
    addr = f"http://127.0.0.1:{_free_port()}"
    for argv in (["submit", str(_job(tmp_path)), "--address", addr], ["jobs", "list", "--address", addr]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert f"cannot reach the Ray Jobs API at {addr}" in err
        assert "ray start --head" in err


def test_bad_spec_or_env_fails_before_the_cluster_is_asked(fake, tmp_path, capsys):
    assert main(["submit", str(_job(tmp_path)), "--set", "training.epoch=2"]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err
    assert main(["submit", str(_job(tmp_path)), "--env", "NOEQUALS"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["submit", str(_job(tmp_path)), "--submission-id", "a b"]) == 2
    assert "--submission-id" in capsys.readouterr().err
    assert not [c for c in fake.calls if c[0] == "submit"]


def test_resolve_address(monkeypatch):
    monkeypatch.delenv("RAY_JOBS_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address is not the Jobs API
    assert jobs.resolve_address(None) == jobs.DEFAULT_ADDRESS
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert jobs.resolve_address(None) == "http://head:8265"
    monkeypatch.setenv("RAY_JOBS_ADDRESS", "head2:8265")
    assert jobs.resolve_address(None) == "http://head2:8265"
    assert jobs.resolve_address("https://x:1") == "https://x:1"
