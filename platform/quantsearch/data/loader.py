"""In-memory batching with seeded shuffling and light augmentation (no DataLoader workers needed)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from quantsearch.data.datasets import ArrayData


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 images -> normalised float32."""
    return (images.float().div_(255.0) - mean) / std


def _augment(x: torch.Tensor, gen: torch.Generator, hflip: bool, pad: int = 2) -> torch.Tensor:
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # [n, h]
    cols = (dx[:, None] + torch.arange(w)[None, :])  # [n, w]
    idx_n = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out.contiguous()


def batches(data: ArrayData, batch_size: int, mean: float, std: float, shuffle: bool = False,
            generator: torch.Generator | None = None, augment: bool = False,
            hflip: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised (x, y) batches; shuffling and augmentation draw only from `generator`."""
    n = len(data)
    if shuffle or augment:
        if generator is None:
            raise ValueError("shuffle/augment need an explicit generator")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        raw = data.images[idx]
        if augment:
            # augment raw pixels so the crop's padding is true background (0), not the mean
            raw = _augment(raw, generator, hflip)  # type: ignore[arg-type]
        yield normalize(raw, mean, std), data.labels[idx]
