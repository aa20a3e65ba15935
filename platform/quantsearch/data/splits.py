"""Deterministic train/val split and disjoint seeded calibration subsets."""

from __future__ import annotations

from typing import TypeVar

import torch

from quantsearch.data.imageset import ImageSet
from quantsearch.errors import DataError

_Set = TypeVar("_Set", bound=ImageSet)


def _perm(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def split_train_val(data: _Set, val_size: int, seed: int = 0) -> tuple[_Set, _Set]:
    """Split the training set into (train, val); the same seed always gives the same split."""
    if not 0 <= val_size < len(data):
        raise DataError(f"val_size {val_size} must be in [0, {len(data) - 1}] for this dataset")
    perm = _perm(len(data), seed)
    return data.subset(perm[val_size:].sort().values), data.subset(perm[:val_size].sort().values)


def take(data: _Set, n: int | None, seed: int = 0) -> _Set:
    """A seeded random subset of n rows (all rows when n is None or too large)."""
    if n is None or n >= len(data):
        return data
    return data.subset(_perm(len(data), seed)[:n].sort().values)


def calibration_subsets(data: _Set, k: int, n: int, seed: int = 0) -> list[_Set]:
    """k disjoint seeded subsets of n images each."""
    if k < 1 or n < 1:
        raise DataError("calibration subsets need k >= 1 and n >= 1")
    if k * n > len(data):
        raise DataError(f"{k} disjoint subsets of {n} images need {k * n} images; only {len(data)} available")
    perm = _perm(len(data), seed)
    return [data.subset(perm[i * n:(i + 1) * n]) for i in range(k)]
