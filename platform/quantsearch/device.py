"""The one device setting of a job: 'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when present)."""

from __future__ import annotations

import re

import torch

from quantsearch.errors import ConfigError

DEVICE_CHOICES = ("cpu", "cuda", "auto")
_PATTERN = re.compile(r"^(cpu|auto|cuda(:\d+)?|meta)$")


def check_device_name(name: str) -> str:
    """Validate a device setting's spelling (no hardware check); returns it."""
    if not isinstance(name, str) or not _PATTERN.match(name):
        raise ConfigError(f"device '{name}' is not one of cpu, cuda, cuda:N, auto")
    return name


def resolve_device(name: str | torch.device | None) -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' without a GPU is a one-line error naming the fix."""
    if isinstance(name, torch.device):
        return name
    name = check_device_name(name or "cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was asked for but torch sees no CUDA GPU here; use --device cpu "
                          "(or auto)")
    return torch.device(name)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's parameters (or buffers) live; cpu for a model with neither."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")
