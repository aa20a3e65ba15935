"""Supernet training on Ray Train with 2 CPU workers: sharding, resume by run name, fault tolerance."""

import os

import pytest
from quantsearch.config import JobSpec
from quantsearch.data import prepare_data
from quantsearch.distributed.train_supernet import FAULT_ENV, train_supernet_ray
from quantsearch.train import train_fp32
from quantsearch.train.checkpoint import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _spec(out, epochs, name):
    return JobSpec.model_validate({
        "name": "ray-test", "output_dir": str(out), "data": {"name": "synthetic", "val_size": 64},
        "training": {"epochs": 1, "batch_size": 64},
        "supernet": {"epochs": epochs, "batch_size": 32, "train_images": 128, "calib_images": 64,
                     "bn_images": 64}, "scaling": {"run_name": name, "max_failures": 1}})


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    out = tmp_path_factory.mktemp("ray")
    spec = _spec(out, 1, "x")
    train_fp32(spec, prepare_data(spec.data), out / "fp32", progress=False)
    yield out
    import ray

    ray.shutdown()


def test_two_workers_then_same_name_resumes(fp32):
    res = train_supernet_ray(_spec(fp32, 1, "resume"), fp32 / "fp32" / "model.pt", fp32 / "sn1", workers=2)
    assert res.metrics["epoch"] == 1
    assert res.metrics["world_size"] == 2
    assert res.metrics["resumed_from_epoch"] == 0
    assert load_checkpoint(res.checkpoint, kind="supernet")["epoch"] == 1
    again = train_supernet_ray(_spec(fp32, 2, "resume"), fp32 / "fp32" / "model.pt", fp32 / "sn1", workers=2)
    assert again.metrics["epoch"] == 2
    assert again.metrics["resumed_from_epoch"] == 1


def test_killed_worker_restarts_from_checkpoint(fp32, monkeypatch):
    marker = fp32 / "killed.txt"
    monkeypatch.setenv(FAULT_ENV, f"1:1:{marker}")
    res = train_supernet_ray(_spec(fp32, 2, "fault"), fp32 / "fp32" / "model.pt", fp32 / "sn2", workers=2)
    assert marker.exists(), "the fault was not injected"
    assert res.metrics["epoch"] == 2
    assert res.metrics["resumed_from_epoch"] == 1  # restarted from the epoch-1 checkpoint, not from scratch
    assert os.path.exists(res.checkpoint)
