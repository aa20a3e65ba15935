"""Dataset registry: Fashion-MNIST from IDX files, sklearn digits, a seeded synthetic set, and users' own data
(an image-folder tree, CIFAR-10 in torchvision's on-disk format)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from quantsearch._util import suggest
from quantsearch.data.idx import read_idx
from quantsearch.data.imageset import ImageSet
from quantsearch.errors import DataError

if TYPE_CHECKING:
    from quantsearch.config import DataSpec

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class ArrayData(ImageSet):
    """Images as uint8 [N, C, H, W] and int64 labels [N], kept whole in memory."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("images must be uint8 [N, C, H, W]")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be [N] matching images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width)."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, index: torch.Tensor) -> ArrayData:
        """Return the rows at `index`."""
        return ArrayData(self.images[index].contiguous(), self.labels[index].contiguous())

    def read(self, index: torch.Tensor) -> torch.Tensor:
        """The images at `index` (a copy)."""
        return self.images[index]


@dataclass(frozen=True)
class DataBundle:
    """A dataset's train and test sets (and val, where the data names one) plus what models need to know."""

    name: str
    train: ImageSet
    test: ImageSet
    num_classes: int
    mean: float
    std: float
    hflip: bool
    source: str
    val: ImageSet | None = None
    classes: tuple[str, ...] = ()

    @property
    def in_channels(self) -> int:
        """Number of image channels."""
        return self.train.image_shape[0]

    @property
    def image_size(self) -> int:
        """Image height (= width)."""
        return self.train.image_shape[1]

    @property
    def streams(self) -> bool:
        """Whether the sets are decoded from files batch by batch rather than held in memory."""
        return self.train.streams


def _fashion_in(folder: Path) -> Path | None:
    """The folder (itself, fashion-mnist/ or FashionMNIST/raw/ in it) holding all four IDX files, else None."""
    for sub in (folder, folder / "fashion-mnist", folder / "FashionMNIST" / "raw"):
        if all((sub / f).exists() or (sub / f"{f}.gz").exists() for f in FASHION_FILES.values()):
            return sub
    return None


def _no_fashion_at(what: str, folder: Path) -> DataError:
    state = "does not exist" if not folder.exists() else "holds no Fashion-MNIST"
    return DataError(f"{what} {state}: expected {', '.join(FASHION_FILES.values())} (plain or .gz) in it or in its "
                     f"fashion-mnist/ or FashionMNIST/raw/ folder; point it at those files or unset it")


def fashion_cache_dir() -> Path:
    """Where a download of Fashion-MNIST goes (and is found again)."""
    return Path.home() / ".cache" / "quantsearch" / "fashion-mnist"


def _find_fashion_dir(root: str | None) -> Path | None:
    """An explicitly named place (data.root, then QUANTSEARCH_DATA) must hold the files; otherwise the Debian
    package's folder or the download cache, or None."""
    if root:
        found = _fashion_in(Path(root))
        if found is None:
            raise _no_fashion_at(f"data.root {root}", Path(root))
        return found
    env = os.environ.get("QUANTSEARCH_DATA")
    if env:
        found = _fashion_in(Path(env))
        if found is None:
            raise _no_fashion_at(f"QUANTSEARCH_DATA={env}", Path(env))
        return found
    for cand in (DEBIAN_FASHION_DIR, fashion_cache_dir()):
        found = _fashion_in(cand)
        if found is not None:
            return found
    return None


def _download_fashion(target: Path) -> Path:
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(target), train=True, download=True)
        FashionMNIST(str(target), train=False, download=True)
    except Exception as exc:  # torchvision raises many kinds when offline
        raise DataError(
            "Fashion-MNIST not found and could not be downloaded "
            f"({type(exc).__name__}); install it with `apt-get install -y dataset-fashion-mnist` "
            "or set QUANTSEARCH_DATA to a folder holding the IDX files"
        ) from exc
    return target / "FashionMNIST" / "raw"


def _idx(folder: Path, stem: str) -> np.ndarray:
    plain = folder / stem
    return read_idx(plain if plain.exists() else folder / f"{stem}.gz")


def load_fashion_mnist(root: str | None = None, download: bool = True) -> DataBundle:
    """Fashion-MNIST 60k/10k 28x28 from QUANTSEARCH_DATA, the Debian package or torchvision."""
    folder = _find_fashion_dir(root)
    if folder is None:
        if not download:
            raise DataError(
                "Fashion-MNIST not found; install it with `apt-get install -y dataset-fashion-mnist` "
                "or set QUANTSEARCH_DATA to a folder holding the IDX files"
            )
        folder = _download_fashion(fashion_cache_dir())
    arrays = {k: _idx(folder, v) for k, v in FASHION_FILES.items()}
    for split in ("train", "test"):
        img, lab = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if img.ndim != 3 or img.shape[1:] != (28, 28) or len(img) != len(lab) or lab.max() > 9:
            raise DataError(f"Fashion-MNIST {split} files in {folder} are inconsistent; reinstall them")

    def wrap(img: np.ndarray, lab: np.ndarray) -> ArrayData:
        return ArrayData(torch.from_numpy(img.copy()).unsqueeze(1), torch.from_numpy(lab.astype(np.int64)))

    return DataBundle(
        name="fashion-mnist",
        train=wrap(arrays["train_images"], arrays["train_labels"]),
        test=wrap(arrays["test_images"], arrays["test_labels"]),
        num_classes=10,
        mean=0.2860,
        std=0.3530,
        hflip=True,
        source=str(folder),
    )


def load_digits_data(root: str | None = None, download: bool = True) -> DataBundle:
    """sklearn's bundled 8x8 digits (1,797 images), upsampled to 16x16; a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.clip(d.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    imgs = imgs.repeat(2, axis=1).repeat(2, axis=2)
    perm = np.random.default_rng(0).permutation(len(imgs))
    n_test = len(imgs) // 5
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    t_img = torch.from_numpy(imgs).unsqueeze(1)
    t_lab = torch.from_numpy(d.target.astype(np.int64))
    return DataBundle(
        name="digits",
        train=ArrayData(t_img[train_idx].contiguous(), t_lab[train_idx].contiguous()),
        test=ArrayData(t_img[test_idx].contiguous(), t_lab[test_idx].contiguous()),
        num_classes=10,
        mean=float(imgs.mean() / 255.0),
        std=float(imgs.std() / 255.0),
        hflip=False,
        source="sklearn.datasets.load_digits",
    )


def make_synthetic(n_train: int = 1024, n_test: int = 256, num_classes: int = 4, size: int = 16,
                   seed: int = 0) -> DataBundle:
    """A seeded, learnable set: each class is a fixed random template plus per-image noise."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.rand(num_classes, 1, size, size, generator=gen)

    def draw(n: int) -> ArrayData:
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        noise = 0.35 * torch.randn(n, 1, size, size, generator=gen)
        imgs = (templates[labels] + noise).clamp(0, 1)
        return ArrayData((imgs * 255).round().to(torch.uint8), labels)

    train, test = draw(n_train), draw(n_test)
    return DataBundle("synthetic", train, test, num_classes, 0.5, 0.3, False, f"synthetic(seed={seed})")


def _imagefolder(spec: DataSpec | None, download: bool) -> DataBundle:
    from quantsearch.data.imagefolder import load_imagefolder

    if spec is None or spec.root is None:
        raise DataError("the imagefolder dataset needs data.root: the folder of class folders")
    return load_imagefolder(spec)


def _cifar10(spec: DataSpec | None, download: bool) -> DataBundle:
    from quantsearch.data.cifar import load_cifar10

    if spec is None or spec.root is None:
        raise DataError("the cifar10 dataset needs data.root: the folder holding cifar-10-batches-py/")
    return load_cifar10(spec.root)


# each loader takes (DataSpec or None, download); only the users'-own-data sets read more of the spec than root
DATASETS: dict[str, Callable[[DataSpec | None, bool], DataBundle]] = {
    "fashion-mnist": lambda spec, download: load_fashion_mnist(spec.root if spec else None, download),
    "digits": lambda spec, download: load_digits_data(),
    "synthetic": lambda spec, download: make_synthetic(),
    "imagefolder": _imagefolder,
    "cifar10": _cifar10,
}


def load_dataset(name: str, root: str | None = None, download: bool = True, spec: DataSpec | None = None
                 ) -> DataBundle:
    """Load a registered dataset by name (`spec`, when given, supplies root and the image-folder settings);
    unknown names raise DataError with a suggestion."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'{suggest(name, DATASETS)}; choose from {sorted(DATASETS)}")
    if spec is None:
        from quantsearch.config import DataSpec

        spec = DataSpec.model_construct(name=name, root=root)
    return DATASETS[name](spec, download)
