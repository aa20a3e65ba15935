"""The `compile` setting of the training stages (QAT, DQSS QAT, supernet): torch.compile the module a training loop
calls, or leave it eager.

Auto (None) compiles on CUDA (with triton present) and not on CPU: on CPU inductor spends tens of seconds per graph
(train mode, and again for a new batch shape) which the short CPU runs here never win back; `compile: true` turns it
on anywhere. The compiled module shares parameters, buffers and state with the model: checkpoints, evaluation and
BN recalibration keep using the model itself.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from quantsearch.device import model_device

# torch.compile backend; tests set "aot_eager" (the same graphs and autograd, no code generation: fast on CPU)
BACKEND = "inductor"


def compile_enabled(setting: bool | None, device: torch.device) -> bool:
    """Whether a stage compiles: the setting, or (None) on CUDA where triton is installed."""
    if setting is not None:
        return setting
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


def maybe_compile(model: nn.Module, setting: bool | None, device: torch.device | None = None) -> nn.Module:
    """torch.compile(model) when `setting` (auto: see compile_enabled) says so, else `model` itself."""
    if not compile_enabled(setting, model_device(model) if device is None else device):
        return model
    compiled: nn.Module = torch.compile(model, backend=BACKEND)  # type: ignore[assignment]
    return compiled
