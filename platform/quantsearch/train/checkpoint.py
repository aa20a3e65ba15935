"""Checkpoints with a format version, written atomically and loaded with weights_only=True."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from quantsearch._util import atomic_torch_save
from quantsearch.errors import CheckpointError

FORMAT = "quantsearch-checkpoint"
VERSION = 1


def model_meta(fp32: dict[str, Any], example: torch.Tensor) -> dict[str, Any]:
    """The fields every quantized checkpoint carries to rebuild its model from an FP32 one."""
    return {"model_name": fp32["model_name"], "dataset": fp32["dataset"], "num_classes": fp32["num_classes"],
            "in_channels": fp32["in_channels"], "input_shape": list(example.shape[1:])}


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Save `payload` plus format/version keys; never leaves a half-written file."""
    atomic_torch_save(path, {"format": FORMAT, "version": VERSION, **payload})


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Load a checkpoint safely; raise CheckpointError if missing, corrupt, foreign or of the wrong kind."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with `quantsearch train`")
    try:
        with warnings.catch_warnings():  # torch warns (to stderr) about foreign pickles before it refuses them
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... on bad files
        if "Weights only load failed" in str(exc) and "Unsupported global" in str(exc):
            raise CheckpointError(f"checkpoint {path} holds Python objects beyond tensors and plain values (not "
                                  "weights-only); it is never unpickled: re-save only its tensors, or retrain with "
                                  "`quantsearch train`") from exc
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch file ({type(exc).__name__}); "
                              "retrain or restore it") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a quantsearch checkpoint")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path} has format version {ckpt.get('version')}; this quantsearch reads "
                              f"version {VERSION}: retrain with this version")
    if kind is not None and ckpt.get("kind") != kind:
        raise CheckpointError(f"{path} is a '{ckpt.get('kind')}' checkpoint, expected '{kind}'")
    bad = first_non_finite(ckpt.get("state_dict"))
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} has non-finite values in '{bad}'; retrain or restore it")
    return ckpt


def first_non_finite(state: Any, prefix: str = "") -> str | None:
    """The name of the first floating tensor holding NaN or inf in a (nested) state dict, else None."""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() and not bool(torch.isfinite(state).all()):
            return prefix or "<tensor>"
        return None
    if isinstance(state, dict):
        for key, value in state.items():
            found = first_non_finite(value, f"{prefix}.{key}" if prefix else str(key))
            if found is not None:
                return found
    return None
