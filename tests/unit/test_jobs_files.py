"""The job specs in jobs/: every one validates (the CIFAR-10 one against a tiny fake tree), each is listed in the
ConfigMap and documented, the benchmark-size and GPU ones say what they promise, and resnet18-cifar (the GPU job's
model) converts and spans a search space."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from quantsearch.cli import main
from quantsearch.config import load_job

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))


def _fake_cifar(root: Path, n: int = 30) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {b"labels": [int(v) for v in rng.integers(0, 10, n)],
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        (d / f).write_bytes(pickle.dumps(batch, protocol=2))
    return root


@pytest.fixture(scope="module")
def fashion_folder(tmp_path_factory):
    """Random images in Fashion-MNIST's IDX files at its full size (60k/10k: the specs' calibration sizes must fit),
    since unit tests never read the real one."""
    from quantsearch.data.datasets import FASHION_FILES

    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("fmnist")
    for split, n in (("train", 60000), ("test", 10000)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (folder / FASHION_FILES[f"{split}_images"]).write_bytes(
            bytes([0, 0, 8, 3]) + np.array([n, 28, 28], ">u4").tobytes() + imgs.tobytes())
        (folder / FASHION_FILES[f"{split}_labels"]).write_bytes(
            bytes([0, 0, 8, 1]) + np.array([n], ">u4").tobytes() + labels.tobytes())
    return folder


@pytest.fixture
def fashion_idx(fashion_folder, monkeypatch):
    """QUANTSEARCH_DATA pointed at the fake Fashion-MNIST."""
    monkeypatch.setenv("QUANTSEARCH_DATA", str(fashion_folder))
    return fashion_folder


def _overrides(spec_path: Path, tmp_path: Path) -> list[str]:
    """Point the data that lives elsewhere (a cluster's volume) at a tiny local copy, and output into tmp."""
    sets = [f"output_dir={tmp_path / 'run'}"]
    raw = yaml.safe_load(spec_path.read_text())
    if raw.get("data", {}).get("name") == "cifar10":
        sets.append(f"data.root={_fake_cifar(tmp_path / 'cifar')}")
    return sets


# the GPU job builds a ResNet-18 for its checks: seconds more than the compact ones
@pytest.mark.parametrize("spec", [pytest.param(p, marks=pytest.mark.slow) if p.name == "gpu-cluster.yaml" else p
                                  for p in JOBS], ids=[p.name for p in JOBS])
def test_every_job_validates(spec, tmp_path, capsys, fashion_idx):
    argv = ["validate", str(spec)]
    for s in _overrides(spec, tmp_path):
        argv += ["--set", s]
    assert main(argv) == 0, capsys.readouterr().err
    assert "valid job" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


def test_every_job_is_in_the_configmap_and_the_readme():
    listed = yaml.safe_load((ROOT / "jobs" / "Kustomization").read_text())["configMapGenerator"][0]["files"]
    assert sorted(listed) == sorted(p.name for p in JOBS)
    readme = (ROOT / "jobs" / "README.md").read_text()
    for p in JOBS:
        assert f"jobs/{p.name}" in readme, p.name
    for needle in ("quantsearch run jobs/", "quantsearch submit jobs/", "--address http://HEAD:8265 --follow",
                   "k8s/README.md"):
        assert needle in readme, needle


def test_fmnist_full_has_the_benchmark_sizes():
    spec = load_job(ROOT / "jobs" / "fmnist-full.yaml")
    assert spec.device == "cpu"
    assert (spec.data.name, spec.data.val_size, spec.data.train_limit) == ("fashion-mnist", 5000, None)
    assert (spec.model.name, spec.training.epochs) == ("resnet8", 4)  # benchmarks/fp32_baseline.py
    sn = spec.supernet
    assert sn is not None  # benchmarks/eqnet_quality.py, full mode
    assert (sn.epochs, sn.train_images, sn.bn_images, sn.table_bits, sn.table_forms) == (4, None, 2048, [8, 4, 3, 2],
                                                                                         "all")
    assert spec.sample is not None  # benchmarks/cqap_search.py, full mode
    assert (spec.sample.subnets, spec.sample.bn_images, spec.sample.val_images) == (900, 512, None)
    assert spec.search is not None
    assert (spec.search.population, spec.search.generations, spec.search.finalists) == (64, 30, 5)
    assert spec.predictor is not None
    assert spec.export is not None


def test_gpu_cluster_is_cifar10_resnet18_on_gpus():
    spec = load_job(ROOT / "jobs" / "gpu-cluster.yaml")
    assert (spec.data.name, spec.model.name, spec.device) == ("cifar10", "resnet18-cifar", "cuda")
    assert spec.data.root is not None
    assert spec.data.root.startswith("/data/")
    assert spec.scaling.workers >= 2
    assert spec.scaling.use_gpu
    assert spec.sample is not None
    assert spec.sample.workers >= 2
    for section in (spec.supernet, spec.predictor, spec.search, spec.export):
        assert section is not None


def test_gpu_cluster_without_its_data_names_the_fix(tmp_path, capsys):
    argv = ["validate", str(ROOT / "jobs" / "gpu-cluster.yaml"), "--set", f"data.root={tmp_path / 'none'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "download cifar-10-python.tar.gz elsewhere and unpack it into data.root" in err[0]


@pytest.mark.slow
def test_resnet18_cifar_converts_and_spans_a_search_space():
    from quantsearch.models import create, list_models
    from quantsearch.quant import MaxAbsCalibrator, QuantPolicy, calibrate_model, convert, get_profile, quant_layers
    from quantsearch.space import SearchSpace, layer_costs, set_config, subnet_cost
    from torch import nn

    assert "resnet18-cifar" in list_models(include_torchvision=False)
    torch.manual_seed(0)
    model = create("resnet18-cifar", 10, 3)
    assert model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    x = torch.randn(2, 3, 16, 16)
    q = convert(model, QuantPolicy(), x)
    layers = quant_layers(q)
    assert len(layers) == sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules()) == 21
    calibrate_model(q, [x], MaxAbsCalibrator())
    space = SearchSpace.for_model(q, get_profile("generic"))
    assert dict(space.pinned) == {"conv1": 8, "fc": 8}  # first and last in execution order
    costs = layer_costs(q, (3, 16, 16))
    lo, hi = space.min_config(), space.max_config()
    assert subnet_cost(costs, lo).bitops < subnet_cost(costs, hi).bitops
    outs = []
    for cfg in (hi, lo):
        set_config(q, cfg)
        q.train()
        out = q(x)
        out.sum().backward()
        outs.append(out.detach())
    assert outs[0].shape == (2, 10)
    assert not torch.allclose(outs[0], outs[1])
    assert layers["layer4.1.conv2"].weight.grad is not None
