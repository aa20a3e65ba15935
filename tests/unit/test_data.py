import gzip
import struct

import numpy as np
import pytest
import torch
from quantsearch.data import batches, calibration_subsets, load_dataset, split_train_val, take
from quantsearch.data import datasets as ds
from quantsearch.data.idx import read_idx
from quantsearch.errors import DataError


def _write_idx(path, arr: np.ndarray, gz=False):
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def test_idx_roundtrip_and_corruption(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr, gz=True)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    raw = (tmp_path / "b")
    _write_idx(raw, arr)
    raw.write_bytes(raw.read_bytes()[:-3])
    with pytest.raises(DataError, match="corrupt"):
        read_idx(raw)
    (tmp_path / "c").write_bytes(b"hello world")
    with pytest.raises(DataError, match="not an IDX"):
        read_idx(tmp_path / "c")


def test_fashion_from_custom_root(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "DEBIAN_FASHION_DIR", tmp_path / "nowhere")
    monkeypatch.setenv("HOME", str(tmp_path))
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 10)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    monkeypatch.setenv("QUANTSEARCH_DATA", str(tmp_path))
    b = load_dataset("fashion-mnist")
    assert len(b.train) == 20
    assert len(b.test) == 10
    assert b.train.images.shape[1:] == (1, 28, 28)


def test_missing_fashion_is_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "DEBIAN_FASHION_DIR", tmp_path / "nowhere")
    monkeypatch.delenv("QUANTSEARCH_DATA", raising=False)
    monkeypatch.setattr(ds.Path, "home", lambda: tmp_path)
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        ds.load_fashion_mnist(download=False)


def test_unknown_dataset_suggests():
    with pytest.raises(DataError, match="did you mean 'digits'"):
        load_dataset("digit")


def test_synthetic_is_seeded_and_learnable_shape(synthetic):
    again = ds.make_synthetic()
    assert torch.equal(synthetic.train.images, again.train.images)
    assert synthetic.num_classes == 4
    assert synthetic.in_channels == 1


def test_digits():
    b = load_dataset("digits")
    assert len(b.train) + len(b.test) == 1797
    assert b.image_size == 16


def test_split_deterministic_and_disjoint(synthetic):
    tr1, va1 = split_train_val(synthetic.train, 200, seed=3)
    _tr2, va2 = split_train_val(synthetic.train, 200, seed=3)
    assert torch.equal(va1.images, va2.images)
    assert len(tr1) == len(synthetic.train) - 200
    _, va3 = split_train_val(synthetic.train, 200, seed=4)
    assert not torch.equal(va1.labels, va3.labels) or not torch.equal(va1.images, va3.images)
    with pytest.raises(DataError):
        split_train_val(synthetic.train, len(synthetic.train), 0)


def test_calibration_subsets_disjoint(synthetic):
    # tag each image with its index so disjointness is checkable
    data = ds.ArrayData(torch.arange(len(synthetic.train)).reshape(-1, 1, 1, 1).to(torch.uint8) * 0
                        + synthetic.train.images[:, :, :1, :1], torch.arange(len(synthetic.train)))
    subs = calibration_subsets(data, 4, 100, seed=1)
    ids = [set(s.labels.tolist()) for s in subs]
    assert all(len(i) == 100 for i in ids)
    assert len(set().union(*ids)) == 400
    with pytest.raises(DataError, match="disjoint"):
        calibration_subsets(data, 11, 100)
    assert len(take(data, 10, 0)) == 10
    assert len(take(data, None)) == len(data)


def test_batches_augment_is_seeded(synthetic):
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return [x for x, _ in batches(synthetic.train, 256, 0.5, 0.3, shuffle=True, generator=g,
                                      augment=True, hflip=True)]
    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert sum(len(x) for x in a) == len(synthetic.train)
    with pytest.raises(ValueError, match="explicit generator"):
        next(batches(synthetic.train, 8, 0, 1, shuffle=True))
