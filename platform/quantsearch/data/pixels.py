"""Pixel maths shared by in-memory and streamed batches: normalisation and the seeded crop/flip augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAD = 2


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 images -> normalised float32."""
    return (images.float().div_(255.0) - mean) / std


def draw_shifts(n: int, generator: torch.Generator, hflip: bool, pad: int = PAD
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Random crop offsets (dy, dx) in [0, 2 pad] and, with `hflip`, which images to flip: all from `generator`."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5 if hflip else None
    return dy, dx, flip


def apply_shifts(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor | None,
                 pad: int = PAD) -> torch.Tensor:
    """Zero-pad by `pad`, crop back to size at (dy, dx) per image, flip where `flip` says."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h)[None, :])  # [n, h]
    cols = (dx[:, None] + torch.arange(w)[None, :])  # [n, w]
    idx_n = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip is not None:
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out.contiguous()
