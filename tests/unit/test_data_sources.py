"""Users' own data: imagefolder trees, CIFAR-10 batch files (restricted unpickler), streaming through DataLoader
workers giving the same batches and results as in memory, and each one-line error."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from quantsearch.cli import main
from quantsearch.config import DataSpec, make_section
from quantsearch.data import ArrayBatches, ArrayData, FileImages, batches, calibration_subsets, prepare_data, take
from quantsearch.errors import ConfigError, DataError
from torch import nn

CLASSES = ("cat", "dog", "owl")


def _img(rng: np.random.Generator, c: int, h: int = 12, w: int = 12, mode: str = "RGB") -> Image.Image:
    """A learnable image: class c is bright in one third of the picture."""
    a = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
    a[:, c * w // 3:(c + 1) * w // 3] += 180
    img = Image.fromarray(a)
    return img.convert(mode) if mode != "RGB" else img


def _tree(root: Path, splits: dict[str, int], seed: int = 0, modes=("RGB",), size=(12, 12)) -> Path:
    """root/<split>/<class>/<i>.png with n images per class ('' = class folders straight under root)."""
    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        for c, name in enumerate(CLASSES):
            d = root / split / name if split else root / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _img(rng, c, *size, mode=modes[i % len(modes)]).save(d / f"{i:03d}.png")
    return root


def _spec(root: Path, **kw) -> DataSpec:
    return make_section(DataSpec, "data", name="imagefolder", root=str(root), **kw)


def _error(spec_or_fn, *needles: str) -> str:
    with pytest.raises(DataError) as info:
        spec_or_fn() if callable(spec_or_fn) else prepare_data(spec_or_fn)
    msg = str(info.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


# imagefolder layouts


def test_folders_layout_with_val_grey_and_rgba_become_rgb(tmp_path):
    root = _tree(tmp_path / "t", {"train": 6, "val": 2, "test": 3}, modes=("RGB", "L", "RGBA", "P"))
    d = prepare_data(_spec(root, stream=False, workers=0))
    assert isinstance(d.train, ArrayData)
    assert (len(d.train), len(d.val), len(d.test)) == (18, 6, 9)  # val/ replaces val_size
    assert d.bundle.classes == CLASSES
    assert d.bundle.num_classes == 3
    assert d.train.image_shape == (3, 12, 12)
    assert d.bundle.in_channels == 3
    assert d.train.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6  # sorted class folders, sorted files
    grey = Image.open(root / "train" / "cat" / "001.png")
    assert grey.mode == "L"
    x = d.train.read(torch.tensor([1]))[0]
    assert torch.equal(x[0], x[1])
    assert torch.equal(x[1], x[2])
    assert torch.equal(x[0], torch.from_numpy(np.array(grey)))


def test_ratio_layout_is_seeded_and_per_class(tmp_path):
    root = _tree(tmp_path / "t", {"": 10})
    a = prepare_data(_spec(root, test_fraction=0.3, split_seed=1, val_size=3, stream=True, workers=0))
    b = prepare_data(_spec(root, test_fraction=0.3, split_seed=1, val_size=3, stream=True, workers=0))
    c = prepare_data(_spec(root, test_fraction=0.3, split_seed=2, val_size=3, stream=True, workers=0))
    assert isinstance(a.test, FileImages)
    assert len(a.test) == 9
    assert sorted(a.test.labels.tolist()) == [0] * 3 + [1] * 3 + [2] * 3
    assert (len(a.train), len(a.val)) == (18, 3)
    assert a.test.paths == b.test.paths
    assert a.test.paths != c.test.paths
    assert not set(a.test.paths) & set(a.train.paths + a.val.paths)
    with pytest.raises(DataError, match="no train/ folder"):
        prepare_data(_spec(root, split="folders"))


def test_image_size_resizes_mixed_sizes(tmp_path):
    root = _tree(tmp_path / "t", {"train": 3, "test": 1})
    _img(np.random.default_rng(1), 0, 20, 30).save(root / "train" / "cat" / "big.png")
    _error(_spec(root), "images differ in size", "set data.image_size")
    d = prepare_data(_spec(root, image_size=8, val_size=0))
    assert d.train.image_shape == (3, 8, 8)
    assert len(d.train) == 10
    s = prepare_data(_spec(root, image_size=8, val_size=0, stream=True, workers=0))
    assert torch.equal(s.train.read(torch.arange(10)), d.train.read(torch.arange(10)))


def test_stream_auto_follows_the_size_limit(tmp_path):
    root = _tree(tmp_path / "t", {"train": 3, "test": 1})
    assert not prepare_data(_spec(root)).bundle.streams  # 15 images of 432 bytes: far below 2048 MB
    assert prepare_data(_spec(root, stream_above_mb=1, image_size=300)).bundle.streams  # 15 x 270 kB > 1 MB


@pytest.mark.parametrize(("build", "needles"), [
    (lambda r: None, ["does not exist", "class folders"]),
    (lambda r: [(r / c).mkdir(parents=True) for c in CLASSES], ["no images"]),
    (lambda r: _tree(r, {"": 2}) and [p.unlink() for p in (r / "dog").iterdir()] and [
        p.unlink() for p in (r / "owl").iterdir()], ["class folder", "dog", "holds no images"]),
    (lambda r: (r / "only").mkdir(parents=True) or _img(np.random.default_rng(), 0).save(r / "only" / "a.png"),
     ["one class folder (only)", "at least two"]),
    (lambda r: _tree(r, {"train": 2, "test": 1}) and (r / "test" / "cat").rename(r / "test" / "kat"),
     ["test has class folders ['dog', 'kat', 'owl']", "same class folders"]),
    (lambda r: _tree(r, {"train": 2}), ["no test/ folder"]),
    (lambda r: _tree(r, {"": 3}) and (r / "dog" / "000.png").write_bytes(b"not a png"),
     ["cannot read image", "dog/000.png", "delete or replace"]),
])
def test_imagefolder_errors_are_one_line(tmp_path, build, needles):
    root = tmp_path / "t"
    build(root)
    _error(_spec(root, image_size=12), *needles)


def test_unreadable_file_found_while_streaming_is_one_line(tmp_path):
    root = _tree(tmp_path / "t", {"": 6})
    d = prepare_data(_spec(root, image_size=12, stream=True, workers=2, val_size=0, test_fraction=0.2))
    (root / "owl" / next(p for p in d.train.paths if "owl" in p).rsplit("/", 1)[1]).write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot read image .*owl/") as info:
        for _ in batches(d.train, 4, d.mean, d.std):
            pass
    assert "\n" not in str(info.value)
    assert "Traceback" not in str(info.value)


def test_spec_checks(tmp_path):
    with pytest.raises(ConfigError, match=r"needs data\.root"):
        make_section(DataSpec, "data", name="imagefolder")
    with pytest.raises(ConfigError, match=r"needs data\.root"):
        make_section(DataSpec, "data", name="cifar10")
    with pytest.raises(ConfigError, match=r"'data\.image_size' applies to the imagefolder dataset only"):
        make_section(DataSpec, "data", name="cifar10", root="x", image_size=32)
    with pytest.raises(ConfigError, match=r"data\.stream"):
        make_section(DataSpec, "data", name="imagefolder", root="x", stream="sometimes")


# CIFAR-10 batch files


def _cifar(root: Path, n: int = 20, protocol: int = 2, seed: int = 0) -> Path:
    """A fake cifar-10-batches-py: bytes keys as the real files have (protocol 2 as they were written)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for f in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {b"batch_label": f.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n)],
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}
        (d / f).write_bytes(pickle.dumps(batch, protocol=protocol))
    names = [s.encode() for s in ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")]
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=protocol))
    return root


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_reads_the_batches(tmp_path, protocol):
    root = _cifar(tmp_path / "c", protocol=protocol)
    d = prepare_data(make_section(DataSpec, "data", name="cifar10", root=str(root), val_size=10))
    assert (len(d.train), len(d.val), len(d.test)) == (90, 10, 20)
    assert d.train.image_shape == (3, 32, 32)
    assert d.bundle.classes[1] == "car"
    raw = pickle.loads((root / "cifar-10-batches-py" / "test_batch").read_bytes())
    assert torch.equal(d.test.images[3], torch.from_numpy(raw[b"data"][3].reshape(3, 32, 32)))
    assert d.test.labels.tolist() == raw[b"labels"]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_cifar10_refuses_a_pickle_that_runs_code(tmp_path):
    root = _cifar(tmp_path / "c")
    marker = tmp_path / "pwned"
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({"data": _Evil(marker), "labels": []}, protocol=2))
    msg = _error(lambda: prepare_data(make_section(DataSpec, "data", name="cifar10", root=str(root))),
                 "data_batch_3 is not a CIFAR-10 batch", "system", "cifar-10-python.tar.gz")
    assert not marker.exists(), msg
    batch.write_bytes(pickle.dumps({"data": 1}, protocol=0) + b"cbuiltins\neval\n")  # bytes past STOP are never read
    _error(lambda: prepare_data(make_section(DataSpec, "data", name="cifar10", root=str(root))), "data_batch_3")
    batch.write_bytes(b"cbuiltins\neval\n(S'print(1)'\ntR.")
    _error(lambda: prepare_data(make_section(DataSpec, "data", name="cifar10", root=str(root))),
           "builtins.eval")
    batch.write_bytes(pickle.dumps({"data": 1}, protocol=2)[:7])
    _error(lambda: prepare_data(make_section(DataSpec, "data", name="cifar10", root=str(root))), "is corrupt")


def test_cifar10_missing_and_malformed(tmp_path):
    spec = make_section(DataSpec, "data", name="cifar10", root=str(tmp_path / "none"))
    _error(spec, "does not exist", "download cifar-10-python.tar.gz elsewhere and unpack it into data.root")
    (tmp_path / "empty").mkdir()
    _error(make_section(DataSpec, "data", name="cifar10", root=str(tmp_path / "empty")),
           "holds no cifar-10-batches-py/", "unpack it into data.root")
    root = _cifar(tmp_path / "c")
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, protocol=2))
    _error(make_section(DataSpec, "data", name="cifar10", root=str(root)), "test_batch has no uint8 'data'")


# streaming: the same batches, training, evaluation and calibration as in memory


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    root = _tree(tmp_path_factory.mktemp("if") / "t", {"train": 20, "test": 6})
    mem = prepare_data(_spec(root, stream=False, val_size=12))
    stream = prepare_data(_spec(root, stream=True, workers=2, val_size=12))
    return mem, stream


def test_streamed_batches_equal_in_memory(both):
    mem, stream = both
    assert isinstance(mem.train, ArrayData)
    assert isinstance(stream.train, FileImages)
    assert stream.bundle.streams
    assert (mem.mean, mem.std) == (stream.mean, stream.std)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(2):  # two passes: the persistent workers serve the second one
        a = list(batches(mem.train, 7, mem.mean, mem.std, True, g1, augment=True, hflip=True))
        b = list(batches(stream.train, 7, stream.mean, stream.std, True, g2, augment=True, hflip=True))
        assert len(a) == len(b) == 7
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb)
            assert torch.equal(ya, yb)
    assert torch.equal(g1.get_state(), g2.get_state())
    sub_m, sub_s = calibration_subsets(mem.train, 2, 5, 3), calibration_subsets(stream.train, 2, 5, 3)
    for m, s in zip(sub_m, sub_s, strict=True):
        assert torch.equal(m.images, s.read(torch.arange(len(s))))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3))


def test_streamed_training_evaluation_and_calibration_equal_in_memory(both):
    from quantsearch.quant import MaxAbsCalibrator, QuantPolicy, calibrate_model, convert
    from quantsearch.supernet.bn import recalibrate_bn
    from quantsearch.supernet.job import ShardedBatches
    from quantsearch.train import evaluate, train_epoch

    results = []
    for d in both:
        model = _net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(1)
        losses = [train_epoch(model, d.train, d.mean, d.std, opt, None, gen, 8, augment=True, hflip=True)
                  for _ in range(1)]
        ev = evaluate(model, d.test, d.mean, d.std, batch_size=5)
        recalibrate_bn(model, ArrayBatches(take(d.train, 16, 0), 8, d.mean, d.std), 16)
        bn = model[1].running_mean.clone()
        sharded = ShardedBatches(d.train, 4, d.mean, d.std, torch.Generator().manual_seed(2), rank=1, world=2)
        shard = [t for batch in sharded for t in batch]
        q = convert(model, QuantPolicy(), d.example(0))
        calibrate_model(q, ArrayBatches(take(d.train, 10, 1), 4, d.mean, d.std), MaxAbsCalibrator())
        results.append((losses, ev, bn, shard, [p.detach().clone() for p in q.buffers()]))
    (lm, em, bm, sm, qm), (ls, es, bs, ss, qs) = results
    assert lm == ls
    assert em == es
    assert em.n == 18
    assert torch.equal(bm, bs)
    assert all(torch.equal(a, b) for a, b in zip(sm, ss, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(qm, qs, strict=True))


# the CLI


def test_data_info_shows_the_new_sets(tmp_path, capsys):
    root = _tree(tmp_path / "t", {"train": 4, "val": 1, "test": 2})
    assert main(["data", "info", "--data", "imagefolder", "--root", str(root), "--stream", "true",
                 "--image-size", "8"]) == 0
    out = capsys.readouterr().out
    for needle in ("dataset      imagefolder", "image        3x8x8", "classes      3 (cat, dog, owl)",
                   "train / val  12 / 3 (val: its own val/ folder)", "test         6", "storage      streamed"):
        assert needle in out, (needle, out)
    croot = _cifar(tmp_path / "c")
    assert main(["data", "info", "--data", "cifar10", "--root", str(croot), "--val-size", "5"]) == 0
    out = capsys.readouterr().out
    for needle in ("image        3x32x32", "classes      10 (plane, car,", "train / val  95 / 5", "in memory"):
        assert needle in out, (needle, out)
    job = tmp_path / "job.yaml"
    job.write_text(f"data: {{name: imagefolder, root: {root}, image_size: 6}}\n")
    assert main(["data", "info", "--job", str(job), "--set", "data.stream=false"]) == 0
    assert "image        3x6x6" in capsys.readouterr().out
    assert main(["data", "info", "--data", "imagefolder", "--root", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "does not exist" in err[0]


def test_validate_a_streamed_imagefolder_job(tmp_path, capsys):
    root = _tree(tmp_path / "t", {"": 6})
    job = tmp_path / "job.yaml"
    job.write_text(f"name: own\noutput_dir: {tmp_path / 'run'}\ndata: {{name: imagefolder, root: {root}, "
                   "image_size: 8, stream: true, val_size: 3}\nmodel: {name: resnet8}\n")
    assert main(["validate", str(job)]) == 0
    out = capsys.readouterr().out
    assert "resnet8 on imagefolder, train 12 / val 3 / test 3" in out
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.mlflow
def test_a_job_runs_every_in_process_stage_on_streamed_files(tmp_path):
    """FP32 (augmented), QAT (calibration, training, test), the supernet (sharded batches, BN recalibration,
    measurement) and the export (BN, calibration, onnxruntime check) all read the files through the workers."""
    from quantsearch.config import load_job
    from quantsearch.pipeline import run_job

    root = _tree(tmp_path / "t", {"train": 16, "test": 4})
    job = tmp_path / "job.yaml"
    job.write_text(f"""name: streamed
device: cpu
output_dir: {tmp_path / 'run'}
data: {{name: imagefolder, root: {root}, stream: true, workers: 2, val_size: 8}}
model: {{name: resnet8}}
training: {{epochs: 1, batch_size: 16, augment: true}}
qat: {{target: {{config: 'uniform:W4A4', calib_images: 16}}, epochs: 1, batch_size: 16}}
supernet: {{epochs: 1, batch_size: 16, calib_images: 16, bn_images: 16, table_bits: [8, 4]}}
export: {{source: qat, calib_images: 16}}
""")
    run_job(load_job(job), progress=False)
    results = (tmp_path / "run" / "results.json").read_text()
    assert "streamed" in results
    assert (tmp_path / "run" / "export" / "model.onnx").is_file()
    assert (tmp_path / "run" / "supernet" / "supernet.pt").is_file()
