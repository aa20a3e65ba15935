"""In-memory batching with seeded shuffling and light augmentation (no DataLoader workers needed)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

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
    if (shuffle or augment) and generator is None:
        raise ValueError("shuffle/augment need an explicit generator")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        raw = data.images[idx]
        if augment:
            # augment raw pixels so the crop's padding is true background (0), not the mean
            raw = _augment(raw, generator, hflip)  # type: ignore[arg-type]
        yield normalize(raw, mean, std), data.labels[idx]


# A batch, as stages take it from any iterable (a torch DataLoader, a list, ArrayBatches): a tensor of inputs x,
# or a tuple/list whose first item is x and second (if any) the labels y.
Batch = torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]


def split_batch(batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x, y or None) of a batch that is x, (x,), (x, y) or (x, y, ...)."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, tuple | list) and batch and isinstance(batch[0], torch.Tensor):
        y = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
        return batch[0], y
    raise TypeError(f"a batch must be a tensor x or a tuple (x, y), got {type(batch).__name__}")


def batch_inputs(batches: Iterable[Batch], max_images: int | None = None) -> list[torch.Tensor]:
    """The inputs x of `batches` (one pass), at most `max_images` of them (the last batch cut to fit)."""
    out: list[torch.Tensor] = []
    seen = 0
    for batch in batches:
        x, _ = split_batch(batch)
        if max_images is not None:
            x = x[: max_images - seen]
            if len(x) == 0:
                break
        out.append(x)
        seen += len(x)
        if max_images is not None and seen >= max_images:
            break
    return out


class ArrayBatches:
    """`batches(...)` as a re-iterable loader: every pass is a new call, so a shuffling pass draws its order from
    `generator` where the previous pass left it (seeded, like a DataLoader with a generator)."""

    def __init__(self, data: ArrayData, batch_size: int, mean: float, std: float, shuffle: bool = False,
                 generator: torch.Generator | None = None, augment: bool = False, hflip: bool = False) -> None:
        self.data, self.batch_size, self.mean, self.std = data, batch_size, mean, std
        self.shuffle, self.generator, self.augment, self.hflip = shuffle, generator, augment, hflip

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return batches(self.data, self.batch_size, self.mean, self.std, self.shuffle, self.generator, self.augment,
                       self.hflip)

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)
