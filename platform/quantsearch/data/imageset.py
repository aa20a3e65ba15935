"""What every stage reads images through: a labelled image set, held whole in memory or decoded from files."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Self

import torch


class ImageSet(ABC):
    """Labelled uint8 images [C, H, W] of one shape; `read` decodes rows, `subset` selects rows without decoding."""

    labels: torch.Tensor

    @abstractmethod
    def __len__(self) -> int:
        """Number of images."""

    @property
    @abstractmethod
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every image."""

    @abstractmethod
    def subset(self, index: torch.Tensor) -> Self:
        """The rows at `index`, of the same kind."""

    @abstractmethod
    def read(self, index: torch.Tensor) -> torch.Tensor:
        """The images at `index` as uint8 [n, C, H, W]."""

    @property
    def streams(self) -> bool:
        """Whether batches are decoded by DataLoader workers (files) rather than sliced from memory."""
        return False

    @property
    def nbytes(self) -> int:
        """Size of the whole set decoded to uint8."""
        c, h, w = self.image_shape
        return len(self) * c * h * w


def image_stats(data: ImageSet, max_images: int = 2048, seed: int = 0) -> tuple[float, float]:
    """(mean, std) over all pixels and channels of a seeded sample of up to `max_images` images, in [0, 1]."""
    n = min(len(data), max_images)
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    x = data.read(index).double().div_(255.0)
    std = float(x.std()) if x.numel() > 1 else 1.0
    return float(x.mean()), std if std > 1e-6 else 1.0
