"""The ModelOpt peer baseline (benchmarks/peer_modelopt.py) end to end on the synthetic set; skipped without
nvidia-modelopt (an optional install: `pip install "nvidia-modelopt==0.47.*" requests huggingface_hub`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from quantsearch.config import JobSpec
from quantsearch.data import PreparedData, load_dataset, take
from quantsearch.train import train_fp32

# find_spec does not import: collecting this file (e.g. under `make test-fast`) stays cheap; the fixture imports
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("modelopt") is None,
                                 reason="nvidia-modelopt is not installed (optional peer baseline)")]

PEER = Path(__file__).resolve().parents[2] / "benchmarks" / "peer_modelopt.py"


def _peer():
    spec = importlib.util.spec_from_file_location("peer_modelopt", PEER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """A resnet8 trained one epoch on the synthetic set, and its prepared data."""
    pytest.importorskip("modelopt.torch.quantization", exc_type=ImportError,
                        reason="nvidia-modelopt does not import (it needs requests and huggingface_hub)")
    bundle = load_dataset("synthetic")
    data = PreparedData(bundle, bundle.train, take(bundle.train, 64, 1), take(bundle.test, 128, 0))
    spec = JobSpec.model_validate({"data": {"name": "synthetic"},
                                   "training": {"epochs": 1, "batch_size": 64, "lr": 0.05, "augment": False}})
    out = tmp_path_factory.mktemp("fp32")
    train_fp32(spec, data, out, resume=False, progress=False)
    return out / "model.pt", data


@pytest.mark.parametrize("bits", [6.0, 4.8])
def test_auto_quantize_peer_meets_budget(synthetic_run, bits):
    ckpt, data = synthetic_run
    peer = _peer()
    res = peer.auto_quantize_peer(ckpt, data, bits, calib_images=64, score_images=64, seed=0, batch_size=32)

    assert 0.0 <= res["test_acc"] <= 1.0
    assert res["test_acc"] > 0.5, res  # 4 classes; the FP32 model learns this set in one epoch
    assert res["effective_bits_requested"] == bits
    assert res["effective_bits_achieved"] <= bits + 1e-3, res
    assert res["effective_bits_achieved"] >= 4.0 - 1e-6
    # ModelOpt's number is the weight-count-weighted average of the chosen formats' bits
    assert res["effective_bits_recomputed"] == pytest.approx(res["effective_bits_achieved"], abs=1e-6)
    assert res["satisfied"] is True
    assert res["modelopt_version"].startswith("0.")
    assert res["seconds"] > 0

    layers = res["layers"]
    assert len(layers) == 10  # resnet8: stem, 6 block convs, 2 shortcuts, fc
    names = list(layers)
    assert names[0] == "stem.0"  # execution order
    assert names[-1] == "fc"
    pinned = [n for n, layer in layers.items() if layer["pinned"]]
    assert pinned == ["stem.0", "fc"]
    assert all(layers[n]["format"] == "W8A8" for n in pinned)
    assert {layer["format"] for layer in layers.values()} <= {"W8A8", "W4A4"}
    # every searched layer of resnet8 sees post-ReLU (>= 0) inputs: its 4-bit activations are unsigned
    assert all(layer["act_unsigned"] for layer in layers.values() if layer["format"] == "W4A4")
    assert not layers["stem.0"]["act_unsigned"]


@pytest.mark.parametrize("bits", [3.0, 4.0])  # 4.0: below reach once first and last are pinned at 8 bits
def test_auto_quantize_peer_rejects_a_budget_out_of_reach(synthetic_run, bits):
    ckpt, data = synthetic_run
    with pytest.raises(ValueError, match="out of reach"):
        _peer().auto_quantize_peer(ckpt, data, bits, calib_images=32, score_images=32, batch_size=32)
