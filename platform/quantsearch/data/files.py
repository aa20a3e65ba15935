"""Image files decoded on demand: one image per file, RGB, optionally resized; decoded by DataLoader workers that
stay up for the life of the data set (a pass of a few batches does not pay for starting processes)."""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from quantsearch.data.imageset import ImageSet
from quantsearch.data.pixels import apply_shifts, normalize
from quantsearch.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def decode_image(path: str, image_size: int | None) -> torch.Tensor:
    """One file as uint8 [3, H, W]: converted to RGB (grey, palette, alpha); with `image_size`, the shorter side
    resized to it and the centre cropped square."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path} ({type(exc).__name__}); delete or replace the file") from exc
    if image_size is not None:
        w, h = rgb.size
        scale = image_size / min(w, h)
        nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
        rgb = rgb.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - image_size) // 2, (nh - image_size) // 2
        rgb = rgb.crop((left, top, left + image_size, top + image_size))
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class Plan:
    """One batch to decode: rows of the file table, the crop offsets and flips drawn in the main process (when
    augmenting), and the normalisation (none: raw uint8)."""

    rows: tuple[int, ...]
    dy: torch.Tensor | None = None
    dx: torch.Tensor | None = None
    flip: torch.Tensor | None = None
    mean: float | None = None
    std: float | None = None


@dataclass(frozen=True)
class _Failure:
    """A worker's DataError, carried back as a value so the main process raises it as one clean line."""

    message: str


class _Plans:
    """The sampler of a persistent DataLoader: each pass sets the plans it iterates; `stopped` ends a pass early."""

    def __init__(self) -> None:
        self.plans: list[Plan] = []
        self.stopped = False

    def __iter__(self) -> Iterator[Plan]:
        for plan in self.plans:
            if self.stopped:
                return
            yield plan

    def __len__(self) -> int:
        return len(self.plans)


class _Decoder(torch.utils.data.Dataset[Any]):
    """The map-style dataset DataLoader workers read: every file of one data set with its label, keyed by Plans."""

    def __init__(self, paths: Sequence[str], labels: torch.Tensor, shape: tuple[int, int, int],
                 image_size: int | None) -> None:
        if labels.shape != (len(paths),):
            raise ValueError("labels must be [N] matching paths")
        self.paths, self.labels, self.shape, self.image_size = tuple(paths), labels, shape, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def decode(self, i: int) -> torch.Tensor:
        """Row i as uint8 [3, H, W]; a file of another size is a DataError naming data.image_size."""
        img = decode_image(self.paths[i], self.image_size)
        if tuple(img.shape) != self.shape:
            raise DataError(f"image {self.paths[i]} is {img.shape[2]}x{img.shape[1]}, others are "
                            f"{self.shape[2]}x{self.shape[1]}; set data.image_size to resize them all")
        return img

    def __getitem__(self, plan: Plan) -> tuple[torch.Tensor, torch.Tensor] | _Failure:
        """Decode one batch (in a worker): stack, shift/flip as planned, normalise."""
        try:
            raw = torch.stack([self.decode(i) for i in plan.rows])
        except DataError as exc:
            return _Failure(str(exc))
        if plan.dy is not None and plan.dx is not None:
            raw = apply_shifts(raw, plan.dy, plan.dx, plan.flip)
        y = self.labels[list(plan.rows)]
        if plan.mean is None or plan.std is None:
            return raw, y
        return normalize(raw, plan.mean, plan.std), y


class FileTable:
    """Every file of one data set, and the persistent DataLoader whose workers decode them (the loader reads a
    _Decoder, not this table: a reference cycle would leave its workers' shutdown to the garbage collector)."""

    def __init__(self, paths: Sequence[str], labels: torch.Tensor, shape: tuple[int, int, int],
                 image_size: int | None, workers: int) -> None:
        self.decoder = _Decoder(paths, labels, shape, image_size)
        self.workers = workers
        self._loader: torch.utils.data.DataLoader[Any] | None = None
        self._busy = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loader": None, "_busy": False}  # worker processes belong to this process

    @property
    def paths(self) -> tuple[str, ...]:
        """Every file."""
        return self.decoder.paths

    @property
    def labels(self) -> torch.Tensor:
        """Every file's label."""
        return self.decoder.labels

    @property
    def shape(self) -> tuple[int, int, int]:
        """(3, H, W) of every decoded image."""
        return self.decoder.shape

    def load(self, plans: list[Plan]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) per plan, in order: in this process for one plan or no workers, else by the persistent workers
        (pinned memory when CUDA is present); a pass started inside another gets a loader of its own."""
        if self.workers == 0 or len(plans) < 2:
            items: Iterator[Any] = (self.decoder[p] for p in plans)
        elif self._busy:
            items = iter(torch.utils.data.DataLoader(self.decoder, batch_size=None, sampler=plans,
                                                     num_workers=self.workers, pin_memory=torch.cuda.is_available()))
        else:
            items = self._persistent(plans)
        try:
            for item in items:
                if isinstance(item, _Failure):
                    raise DataError(item.message)
                yield item
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # end the persistent pass now, not when the error's traceback is collected
                close()

    def _persistent(self, plans: list[Plan]) -> Iterator[Any]:
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(self.decoder, batch_size=None, sampler=_Plans(),
                                                       num_workers=self.workers, persistent_workers=True,
                                                       pin_memory=torch.cuda.is_available())
            # A table caught in a reference cycle (an error's traceback) is freed by the garbage collector, which
            # would close the loader's queues before its workers hear they should stop (each then takes 5 s to
            # time out). Holding the loader outside the cycle until the table goes keeps it out of that sweep.
            weakref.finalize(self, [self._loader].clear)
        sampler = self._loader.sampler
        assert isinstance(sampler, _Plans)
        sampler.plans, sampler.stopped = plans, False
        self._busy = True
        items = iter(self._loader)
        done = False
        try:
            yield from items
            done = True
        finally:
            if not done:
                # a pass left early (a consumer that needs fewer batches, an error): take back the few batches the
                # workers were already given, so none is in flight when the next pass or the shutdown comes
                sampler.stopped = True
                try:
                    for _ in items:
                        pass
                except Exception:  # a crashed worker: start new ones next time
                    self._loader = None
            self._busy = False


@dataclass(frozen=True)
class FileImages(ImageSet):
    """Some rows of a FileTable: images kept as files and decoded when read (subsets share the table's workers)."""

    table: FileTable
    rows: torch.Tensor

    @classmethod
    def from_files(cls, paths: Sequence[str], labels: torch.Tensor, shape: tuple[int, int, int],
                   image_size: int | None = None, workers: int = 0) -> FileImages:
        """All of `paths`, as one new table."""
        return cls(FileTable(paths, labels, shape, image_size, workers), torch.arange(len(paths)))

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> torch.Tensor:  # type: ignore[override]
        """int64 [N]."""
        return self.table.labels[self.rows]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(3, H, W)."""
        return self.table.shape

    @property
    def streams(self) -> bool:
        """Batches come from DataLoader workers decoding the files."""
        return True

    @property
    def workers(self) -> int:
        """DataLoader worker processes decoding the files."""
        return self.table.workers

    @property
    def paths(self) -> tuple[str, ...]:
        """The files, in row order."""
        return tuple(self.table.paths[i] for i in self.rows.tolist())

    def subset(self, index: torch.Tensor) -> FileImages:
        """The rows at `index` (nothing is decoded)."""
        return FileImages(self.table, self.rows[index])

    def plans(self, order: torch.Tensor, batch_size: int) -> list[Plan]:
        """Plans of raw batches of the rows at `order`."""
        rows = self.rows[order].tolist()
        return [Plan(tuple(rows[s:s + batch_size])) for s in range(0, len(rows), batch_size)]

    def read(self, index: torch.Tensor) -> torch.Tensor:
        """Decode the rows at `index` as uint8 [n, 3, H, W]."""
        out = [x for x, _ in self.table.load(self.plans(index, 256))]
        return torch.cat(out) if out else torch.empty((0, *self.image_shape), dtype=torch.uint8)
