"""The GPU check's machinery on the CPU: the same stack and checker, so `make gpu-check` cannot rot unseen."""

from __future__ import annotations

import pytest

from tests.gpu.stack import check, run_stack

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.mlflow]


def test_every_stage_runs_on_the_cpu_when_asked(tmp_path):
    result = run_stack(tmp_path, "cpu", {"name": "synthetic", "val_size": 128})
    check(result, "cpu")
    with pytest.raises(AssertionError, match="tensors off cuda"):
        check(result, "cuda")
    import ray

    ray.shutdown()
