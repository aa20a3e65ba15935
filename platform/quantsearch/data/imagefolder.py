"""Users' own images: a torchvision-ImageFolder tree (class folders), split by train/val/test folders or a ratio."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from quantsearch.config import DataSpec
from quantsearch.data.datasets import ArrayData, DataBundle
from quantsearch.data.files import IMAGE_EXTENSIONS, FileImages
from quantsearch.data.imageset import ImageSet, image_stats
from quantsearch.errors import DataError

MB = 1024 * 1024


def _class_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images_in(folder: Path) -> list[str]:
    """Image files under `folder` (any depth), sorted, hidden ones skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in filenames
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def _scan(folder: Path) -> tuple[list[str], list[str], list[int]]:
    """(classes, paths, labels) of one class-folder tree."""
    classes = _class_dirs(folder)
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = _images_in(folder / name)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders under {folder}; "
                        "put each class's images in a folder named after the class")
    return classes, paths, labels


def _check_classes(root: Path, classes: list[str], counts: list[int]) -> None:
    if len(classes) < 2:
        raise DataError(f"{root} holds one class folder ({', '.join(classes)}); a classifier needs at least two")
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        raise DataError(f"class folder {root / empty[0]} holds no images; add some or remove the folder")


def _ratio_split(paths: list[str], labels: list[int], fraction: float, seed: int
                 ) -> tuple[list[int], list[int]]:
    """(train rows, test rows): a seeded `fraction` of each class (at least one image where a class has two)."""
    gen = torch.Generator().manual_seed(seed)
    lab = torch.tensor(labels)
    train: list[int] = []
    test: list[int] = []
    for c in sorted(set(labels)):
        rows = torch.nonzero(lab == c).flatten()
        rows = rows[torch.randperm(len(rows), generator=gen)]
        n_test = min(len(rows) - 1, max(1, round(fraction * len(rows))))
        test += rows[:n_test].tolist()
        train += rows[n_test:].tolist()
    return sorted(train), sorted(test)


def _shape(paths: list[str], image_size: int | None) -> tuple[int, int, int]:
    """(3, H, W): the resize target, else the one size every image has (read from the file headers)."""
    if image_size is not None:
        return 3, image_size, image_size
    from PIL import Image, UnidentifiedImageError

    first: tuple[int, int] | None = None
    for p in paths:
        try:
            with Image.open(p) as img:
                size = img.size
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"cannot read image {p} ({type(exc).__name__}); delete or replace the file") from exc
        if first is None:
            first, where = size, p
        elif size != first:
            raise DataError(f"images differ in size ({first[0]}x{first[1]} in {where}, {size[0]}x{size[1]} in {p}); "
                            "set data.image_size to resize them all")
    assert first is not None
    return 3, first[1], first[0]


def _layout(root: Path, split: str) -> str:
    if not root.is_dir():
        state = "does not exist" if not root.exists() else "is not a folder"
        raise DataError(f"data.root {root} {state}; point it at a folder of class folders (or of train/ and test/ "
                        "folders of them)")
    if split == "auto":
        return "folders" if (root / "train").is_dir() else "ratio"
    return split


def _in_memory(files: FileImages) -> ArrayData:
    return ArrayData(files.read(torch.arange(len(files))), files.labels)


def load_imagefolder(spec: DataSpec) -> DataBundle:
    """The tree at spec.root as a DataBundle: images kept as files (streamed) or decoded whole, as spec.stream says."""
    assert spec.root is not None
    root = Path(spec.root)
    layout = _layout(root, spec.split)
    val_files: tuple[list[str], list[int]] | None = None
    if layout == "folders":
        for need in ("train", "test"):
            if not (root / need).is_dir():
                raise DataError(f"{root} has no {need}/ folder; give it train/ and test/ folders of class folders "
                                "(val/ optional), or set data.split: ratio")
        classes, paths, labels = _scan(root / "train")
        _check_classes(root / "train", classes, [labels.count(i) for i in range(len(classes))])
        split_sets = {"train": (paths, labels)}
        for name in ("val", "test"):
            if not (root / name).is_dir():
                continue
            got, p, lab = _scan(root / name)
            if got != classes:
                raise DataError(f"{root / name} has class folders {got} but {root / 'train'} has {classes}; give "
                                "every split the same class folders")
            split_sets[name] = (p, lab)
        train_paths, train_labels = split_sets["train"]
        test_paths, test_labels = split_sets["test"]
        val_files = split_sets.get("val")
        source = f"{root} (train/{', val/' if val_files else ''}, test/ folders)"
    else:
        classes, paths, labels = _scan(root)
        _check_classes(root, classes, [labels.count(i) for i in range(len(classes))])
        tr, te = _ratio_split(paths, labels, spec.test_fraction, spec.split_seed)
        train_paths, train_labels = [paths[i] for i in tr], [labels[i] for i in tr]
        test_paths, test_labels = [paths[i] for i in te], [labels[i] for i in te]
        source = f"{root} (class folders, {spec.test_fraction:g} of each class tested, split_seed {spec.split_seed})"
    all_paths = train_paths + test_paths + (val_files[0] if val_files else [])
    shape = _shape(all_paths, spec.image_size)

    def files(p: list[str], lab: list[int]) -> FileImages:
        return FileImages.from_files(p, torch.tensor(lab, dtype=torch.int64), shape, spec.image_size, spec.workers)

    streamed = {"train": files(train_paths, train_labels), "test": files(test_paths, test_labels)}
    if val_files:
        streamed["val"] = files(*val_files)
    decoded = sum(s.nbytes for s in streamed.values())
    stream = spec.stream if spec.stream != "auto" else decoded > spec.stream_above_mb * MB
    sets: dict[str, ImageSet] = dict(streamed) if stream else {k: _in_memory(v) for k, v in streamed.items()}
    mean, std = image_stats(sets["train"])
    return DataBundle("imagefolder", sets["train"], sets["test"], len(classes), mean, std, True, source,
                      val=sets.get("val"), classes=tuple(classes))
