"""CIFAR-10 from torchvision's on-disk format (cifar-10-batches-py/), read with an unpickler that builds only what
the batch files hold (dicts, lists, strings, ints, numpy uint8 arrays), so a tampered file cannot run code."""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantsearch.data.datasets import ArrayData, DataBundle
from quantsearch.data.imageset import image_stats
from quantsearch.errors import DataError

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_FIX = "download cifar-10-python.tar.gz elsewhere and unpack it into data.root"


def _numpy_attr(name: str) -> Any:
    """numpy's array-reconstruction helpers under their numpy 2 (_core) or numpy 1 (core) module."""
    module, attr = name.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), attr)
    except ImportError:
        return getattr(importlib.import_module(f"numpy.core.{module}"), attr)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What protocol-2 pickles call to rebuild bytes; only the latin-1 codec is allowed."""
    if encoding.replace("-", "").lower() != "latin1" or not isinstance(text, str):
        raise _Refused(f"_codecs.encode with codec {encoding!r}")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _numpy_attr("multiarray._reconstruct")
       for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _numpy_attr("numeric._frombuffer") for core in ("core", "_core")},
}


class _Refused(pickle.UnpicklingError):
    """The file asked for a global a CIFAR batch never needs."""


class _BatchUnpickler(pickle.Unpickler):
    """Resolves only the globals a CIFAR batch needs; anything else (os.system, builtins.eval, ...) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        """The allowed callable, else UnpicklingError naming what the file asked for."""
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        """Batch files have no persistent ids."""
        raise _Refused("a persistent id")


def read_batch(path: Path) -> dict[str, Any]:
    """One batch file as a dict with str keys; a file that is not a CIFAR batch is a one-line DataError."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror}); {_FIX}") from exc
    try:
        obj = _BatchUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except _Refused as exc:
        raise DataError(f"{path} is not a CIFAR-10 batch: it asks for {exc}, which no CIFAR batch holds; "
                        f"delete it and {_FIX}") from None
    except Exception as exc:  # a truncated or garbled pickle raises many kinds
        raise DataError(f"{path} is corrupt ({type(exc).__name__}); delete it and {_FIX}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch (it holds a {type(obj).__name__}); {_FIX}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _images(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, 3, 32, 32], int64 [N]) of one batch file, checked."""
    batch = read_batch(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path} has no uint8 'data' array of 3072-byte rows; delete it and {_FIX}")
    if not isinstance(labels, list) or len(labels) != len(data) or not all(
            isinstance(v, int) and 0 <= v < 10 for v in labels):
        raise DataError(f"{path} has no 'labels' list of 0..9 matching its {len(data)} rows; delete it and {_FIX}")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def find_cifar10(root: str | Path) -> Path:
    """The folder holding the batch files: root/cifar-10-batches-py or root itself."""
    root = Path(root)
    for folder in (root / FOLDER, root):
        if all((folder / f).is_file() for f in (*TRAIN_BATCHES, TEST_BATCH)):
            return folder
    state = "does not exist" if not root.exists() else f"holds no {FOLDER}/ with data_batch_1..5 and test_batch"
    raise DataError(f"data.root {root} {state}; {_FIX}")


def _label_names(folder: Path) -> tuple[str, ...]:
    meta = folder / "batches.meta"
    if not meta.is_file():
        return LABEL_NAMES
    names = read_batch(meta).get("label_names")
    if isinstance(names, list) and len(names) == 10 and all(isinstance(n, str | bytes) for n in names):
        return tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)
    return LABEL_NAMES


def load_cifar10(root: str | Path) -> DataBundle:
    """CIFAR-10's 50k/10k 32x32 RGB images from the unpacked python archive under `root`, in memory (184 MB)."""
    folder = find_cifar10(root)
    parts = [_images(folder / f) for f in TRAIN_BATCHES]
    test_x, test_y = _images(folder / TEST_BATCH)

    def wrap(x: np.ndarray, y: np.ndarray) -> ArrayData:
        return ArrayData(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))

    train = wrap(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    mean, std = image_stats(train)
    return DataBundle("cifar10", train, wrap(test_x, test_y), 10, mean, std, True, str(folder),
                      classes=_label_names(folder))
