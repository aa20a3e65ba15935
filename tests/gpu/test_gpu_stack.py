"""FP32 -> QAT -> DQSS-PTQ -> supernet (1 Ray worker with a GPU) on Fashion-MNIST on CUDA (`make gpu-check`)."""

from __future__ import annotations

import pytest
import torch

from tests.gpu.stack import check, run_stack

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_every_stage_runs_on_cuda(tmp_path):
    from tests.conftest import fashion_available

    data = ({"name": "fashion-mnist", "val_size": 1000, "train_limit": 2000, "test_limit": 1000}
            if fashion_available() else {"name": "synthetic", "val_size": 128})
    result = run_stack(tmp_path, "cuda", data)
    check(result, "cuda")
    import ray

    ray.shutdown()
