"""A real multi-node run: a 2-node Ray cluster on 127.0.0.1 (head + one worker node, 1 CPU each, one shared storage
folder), a tiny job submitted with `quantsearch submit --follow` through the Jobs API. Supernet training runs on 2
Ray Train workers on the 2 nodes (placement SPREAD), the sampling Tune trials run on both nodes, checkpoints and
results land in the job's storage path; `quantsearch jobs list|status|logs|stop` and `quantsearch compare` on what it
left. The nodes are stopped after (only the processes they started)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from quantsearch.cli import main

from tests.integration.ray_cluster import LocalCluster

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.mlflow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster.start(workers=1, cpus=1)
    try:
        yield c
    finally:
        c.stop()
        assert not c.leftovers(), f"processes left running: {c.leftovers()}"


def tiny_job(out: Path, name: str = "two-nodes") -> dict:
    return {
        "name": name, "output_dir": str(out), "device": "cpu", "seed": 0,
        "data": {"name": "synthetic", "val_size": 64, "train_limit": 256, "test_limit": 128},
        "model": {"name": "resnet8"},
        "training": {"epochs": 1, "batch_size": 64},
        "supernet": {"epochs": 1, "batch_size": 32, "train_images": 128, "calib_images": 64, "bn_images": 64,
                     "init_calibrator": "maxabs", "table_bits": [8]},
        "sample": {"subnets": 8, "chunk": 2, "bn_images": 64, "workers": 2},
        "scaling": {"workers": 2, "placement_strategy": "SPREAD", "storage_path": str(out / "ray")},
    }


def _cli(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = LocalCluster.env()
    return subprocess.run([sys.executable, "-m", "quantsearch", *argv], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


def test_submitted_job_trains_and_samples_on_both_nodes(cluster, tmp_path, capsys):
    out = tmp_path / "shared" / "run"  # every node sees this folder: the run's output and Ray storage
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(tiny_job(out)))
    t0 = time.monotonic()
    r = _cli("submit", str(job), "--address", cluster.dashboard, "--follow", "--submission-id", "qs-two-nodes")
    seconds = time.monotonic() - t0
    cluster.remember()
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert r.stdout.splitlines()[0] == "qs-two-nodes"
    assert "job qs-two-nodes SUCCEEDED" in r.stderr
    assert "quantsearch results" in r.stdout  # the job's table, streamed back
    nodes = cluster.node_ids()
    assert len(nodes) == 2

    # supernet: 2 Ray Train workers, one on each node; the checkpoint lives in the run's storage path
    placed = json.loads((out / "supernet" / "workers.json").read_text())
    assert [w["rank"] for w in placed] == [0, 1]
    assert {w["node_id"] for w in placed} == nodes
    run_dir = out / "ray" / "two-nodes-supernet"
    assert sorted(p.name for p in run_dir.glob("checkpoint_*")), list(run_dir.iterdir())
    assert (out / "supernet" / "supernet.pt").is_file()

    # sampling: 4 Tune trials of 2 subnets, on both nodes, rows in the run's table
    trials = json.loads((out / "ray" / "sample-trials.json").read_text())
    assert sorted(t["index"] for t in trials) == [0, 1, 2, 3]
    assert {t["node_id"] for t in trials} == nodes
    from quantsearch.data.tables import read_rows

    assert len(read_rows(out / "sample" / "measured.parquet")) == 8
    assert (out / "ray" / "sample").is_dir()  # Tune's experiment folder, in the storage path too

    # MLflow: the job's parent run, its stage runs linked, the supernet run saw 2 nodes
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("two-nodes")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"fp32", "supernet", "sample"}
    assert children["supernet"].data.metrics["nodes"] == 2
    assert children["supernet"].data.metrics["world_size"] == 2
    assert parent.data.tags["child.supernet"] == children["supernet"].info.run_id
    print(f"\nsubmitted job on 2 nodes: {seconds:.0f}s")

    # the jobs commands on what ran
    capsys.readouterr()
    assert main(["jobs", "list", "--address", cluster.dashboard]) == 0
    listed = capsys.readouterr().out
    assert "qs-two-nodes" in listed
    assert "SUCCEEDED" in listed
    assert main(["jobs", "status", "qs-two-nodes", "--address", cluster.dashboard]) == 0
    assert capsys.readouterr().out.startswith("qs-two-nodes SUCCEEDED")
    assert main(["jobs", "logs", "qs-two-nodes", "--address", cluster.dashboard]) == 0
    assert "quantsearch results" in capsys.readouterr().out

    # and the comparison reads its store
    assert main(["compare", "--job", str(job), "--metric", "supernet.nodes"]) == 0
    table = capsys.readouterr().out
    assert "two-nodes" in table
    assert "fp32,supernet,sample" in table


def test_stop_a_running_job(cluster, tmp_path, capsys):
    out = tmp_path / "long"
    spec = tiny_job(out, "long-job")
    spec["training"] = {"epochs": 500, "batch_size": 64}  # far longer than the test waits
    job = tmp_path / "long.yaml"
    job.write_text(yaml.safe_dump(spec))
    r = _cli("submit", str(job), "--address", cluster.dashboard, timeout=120)
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip()
    from quantsearch.distributed.jobs import job_info

    t0 = time.monotonic()
    while job_info(sid, cluster.dashboard).status == "PENDING" and time.monotonic() - t0 < 60:
        time.sleep(1)
    cluster.remember()
    capsys.readouterr()
    assert main(["jobs", "stop", sid, "--wait", "--address", cluster.dashboard]) == 0
    assert capsys.readouterr().out.strip() == f"{sid} STOPPED"
    assert main(["jobs", "status", sid, "--address", cluster.dashboard]) == 0
    assert f"{sid} STOPPED" in capsys.readouterr().out
    assert main(["jobs", "status", sid, "--wait", "--address", cluster.dashboard]) == 1  # it did not succeed
