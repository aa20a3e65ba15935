"""Batching with seeded shuffling and light augmentation: sliced from memory, or decoded from files by DataLoader
workers (the same batches either way: every random draw happens here, in the main process)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

import torch

from quantsearch.data.datasets import ArrayData
from quantsearch.data.files import FileImages
from quantsearch.data.imageset import ImageSet
from quantsearch.data.pixels import apply_shifts, draw_shifts, normalize

__all__ = ["ArrayBatches", "Batch", "batch_inputs", "batches", "normalize", "split_batch"]


def _augment(x: torch.Tensor, gen: torch.Generator, hflip: bool) -> torch.Tensor:
    return apply_shifts(x, *draw_shifts(len(x), gen, hflip))


def batches(data: ImageSet, batch_size: int, mean: float, std: float, shuffle: bool = False,
            generator: torch.Generator | None = None, augment: bool = False,
            hflip: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised (x, y) batches; shuffling and augmentation draw only from `generator`.

    Images in memory are sliced batch by batch; files are decoded by DataLoader workers, the pass's order and
    crops drawn up front in the same sequence, so both give the same batches."""
    n = len(data)
    if (shuffle or augment) and generator is None:
        raise ValueError("shuffle/augment need an explicit generator")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if isinstance(data, FileImages):
        plans = data.plans(order, batch_size)
        if augment:
            plans = [replace(p, **dict(zip(("dy", "dx", "flip"), draw_shifts(len(p.rows), generator, hflip),  # type: ignore[arg-type]
                                           strict=True))) for p in plans]
        yield from data.table.load([replace(p, mean=mean, std=std) for p in plans])
        return
    if not isinstance(data, ArrayData):
        raise TypeError(f"batches reads ArrayData or FileImages, got {type(data).__name__}")
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

    def __init__(self, data: ImageSet, batch_size: int, mean: float, std: float, shuffle: bool = False,
                 generator: torch.Generator | None = None, augment: bool = False, hflip: bool = False) -> None:
        self.data, self.batch_size, self.mean, self.std = data, batch_size, mean, std
        self.shuffle, self.generator, self.augment, self.hflip = shuffle, generator, augment, hflip

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return batches(self.data, self.batch_size, self.mean, self.std, self.shuffle, self.generator, self.augment,
                       self.hflip)

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)
