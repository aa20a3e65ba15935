"""Everything is validated before any work: one line, exit code 2, nothing written (issue: validate everything)."""

from __future__ import annotations

import io

import pytest
import torch
import yaml
from quantsearch.cli import main
from quantsearch.config import DataSpec, JobSpec, ModelSpec, TrainingSpec, load_job
from quantsearch.errors import CheckpointError, ConfigError, DataError


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    """A tiny FP32 checkpoint on the synthetic set (1 epoch on 64 images: about a second)."""
    from quantsearch.data import prepare_data
    from quantsearch.train import train_fp32

    spec = JobSpec(device="cpu", data=DataSpec(name="synthetic", train_limit=64), model=ModelSpec(name="resnet8"),
                   training=TrainingSpec(epochs=1, batch_size=64))
    out = tmp_path_factory.mktemp("fp32")
    return str(train_fp32(spec, prepare_data(spec.data), out, progress=False).checkpoint)


@pytest.fixture(scope="module")
def n_train():
    """How many images the synthetic train split holds (after the val split)."""
    from quantsearch.data import prepare_data

    return len(prepare_data(DataSpec(name="synthetic")).train)


def fails(capsys, argv, *needles, absent=()):
    """Run the CLI; assert exit 2, one stderr line holding every needle, and none of `absent` written."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    for path in absent:
        assert not path.exists(), path
    return lines[0]


def job(tmp_path, **sections):
    """Write a synthetic-data job spec; its output_dir is tmp_path/run (must never appear on failure)."""
    raw = {"name": "t", "device": "cpu", "output_dir": str(tmp_path / "run"),
           "data": {"name": "synthetic", "train_limit": 64}, "training": {"epochs": 1, "batch_size": 64}}
    raw.update(sections)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# 1. bits outside 2..8 anywhere, and SubnetConfig files that do not exist


@pytest.mark.parametrize(("sections", "key"), [
    ({"qat": {"config": "uniform:W9A9"}}, "qat.target.config"),
    ({"dqss": {"target": {"config": "uniform:W1A4"}}}, "dqss.target.config"),
    ({"supernet": {"table_bits": [8, 9]}}, "supernet.table_bits"),
])
def test_bits_outside_2_to_8_in_spec(tmp_path, capsys, sections, key):
    line = fails(capsys, ["validate", job(tmp_path, **sections)], key, "2..8", absent=[tmp_path / "run"])
    assert "invalid value" in line
    fails(capsys, ["run", job(tmp_path, **sections), "--quiet"], key, absent=[tmp_path / "run"])


def test_bits_outside_2_to_8_on_the_command_line(tmp_path, capsys, fp32):
    out = tmp_path / "out"
    fails(capsys, ["qat", "--config", "uniform:W9A9", "--checkpoint", fp32, "--out", out], "qat.target.config", "2..8",
          absent=[out])
    fails(capsys, ["dqss", "--checkpoint", fp32, "--bits", "9", "--out", out], "--bits 9", "2..8", absent=[out])
    fails(capsys, ["calibrate", "--checkpoint", fp32, "--method", "maxabs", "--bits", "1", "--out", out],
          "--bits 1", "2..8", absent=[out])


def test_missing_subnet_json(tmp_path, capsys, fp32):
    missing = tmp_path / "best.json"
    fails(capsys, ["validate", job(tmp_path, dqss={"config": str(missing)})], "dqss.target.config", "does not exist",
          absent=[tmp_path / "run"])
    fails(capsys, ["validate", job(tmp_path, qat={"config": str(missing)})], "qat.target.config", "does not exist")
    out = tmp_path / "out"
    fails(capsys, ["dqss", "--checkpoint", fp32, "--subnet", missing, "--out", out], "--subnet", "does not exist",
          absent=[out])


# 2. unknown profiles, models and datasets anywhere, with the closest valid name


@pytest.mark.parametrize(("sections", "needles"), [
    ({"qat": {"profile": "tflite"}}, ["qat.target.profile", "did you mean 'tflite-int8'"]),
    ({"dqss": {"target": {"profile": "generc"}}}, ["dqss.target.profile", "did you mean 'generic'"]),
    ({"supernet": {"profile": "tensorrt"}}, ["supernet.profile", "did you mean 'tensorrt-int8'"]),
    ({"model": {"name": "resnet9"}}, ["model.name", "did you mean 'resnet8'"]),
    ({"model": {"name": "resnet18"}}, ["model.name", "did you mean 'tv:resnet18'"]),
    ({"model": {"name": "tv:resnet19"}}, ["model.name", "did you mean 'tv:resnet18'"]),
    ({"data": {"name": "synthetc"}}, ["data.name", "did you mean 'synthetic'"]),
])
def test_unknown_names_suggest_the_closest(tmp_path, capsys, sections, needles):
    fails(capsys, ["validate", job(tmp_path, **sections)], *needles, absent=[tmp_path / "run"])


def test_unknown_profile_on_the_command_line(tmp_path, capsys, fp32):
    out = tmp_path / "out"
    for argv in (["qat", "--config", "uniform:W4A4"], ["dqss", "--bits", "4"],
                 ["calibrate", "--method", "maxabs", "--bits", "8"]):
        fails(capsys, [*argv, "--checkpoint", fp32, "--profile", "tflite", "--out", out],
              "did you mean 'tflite-int8'", absent=[out])


def test_torchvision_classifier_name_is_valid():
    assert JobSpec.model_validate({"model": {"name": "tv:resnet18"}}).model.name == "tv:resnet18"


# 3. an empty spec file


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_spec_is_rejected(tmp_path, capsys, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="is empty"):
        load_job(path)
    fails(capsys, ["validate", path], f"job spec {path} is empty")
    fails(capsys, ["run", path], "is empty")


# 4. --out (or output_dir) that is an existing file


def test_out_that_is_a_file(tmp_path, capsys, fp32):
    f = tmp_path / "taken"
    f.write_text("x")
    for argv in (["train", "--data", "synthetic", "--epochs", "1"],
                 ["qat", "--config", "uniform:W4A4", "--checkpoint", fp32],
                 ["calibrate", "--checkpoint", fp32, "--method", "maxabs"],
                 ["dqss", "--checkpoint", fp32, "--bits", "4"]):
        fails(capsys, [*argv, "--out", f], f"--out {f} is an existing file")
        fails(capsys, [*argv, "--out", f / "sub"], f"{f} is a file")
        assert f.read_text() == "x"
    spec = job(tmp_path, output_dir=str(f))
    fails(capsys, ["validate", spec], "output_dir", "existing file")
    fails(capsys, ["run", spec, "--quiet"], "output_dir", "existing file")


# 5. --calib-images above what the train split holds


def test_calib_images_above_the_train_split_cli(tmp_path, capsys, fp32, n_train):
    out = tmp_path / "out"
    big = str(n_train + 1)
    fails(capsys, ["qat", "--config", "uniform:W4A4", "--checkpoint", fp32, "--calib-images", big, "--out", out],
          "--calib-images", f"holds only {n_train}", absent=[out])
    fails(capsys, ["calibrate", "--checkpoint", fp32, "--method", "maxabs", "--calib-images", big, "--out", out],
          "--calib-images", f"holds only {n_train}", absent=[out])
    fails(capsys, ["dqss", "--checkpoint", fp32, "--bits", "4", "--calib-images", big, "--out", out],
          "--calib-images", f"holds only {n_train}", absent=[out])
    fails(capsys, ["dqss", "--checkpoint", fp32, "--bits", "4", "--subsets", "2", "--calib-images",
                   str(n_train // 2 + 1), "--out", out], "--subsets", f"holds only {n_train}", absent=[out])


@pytest.mark.parametrize(("section", "key"), [("qat", "qat.target.calib_images"), ("dqss", "dqss.target.calib_images"),
                                          ("supernet", "supernet.calib_images")])
def test_calib_images_above_the_train_split_spec(tmp_path, capsys, section, key):
    spec = job(tmp_path, data={"name": "synthetic"}, **{section: {"calib_images": 100_000}})
    fails(capsys, ["validate", spec], key, "holds only", absent=[tmp_path / "run"])
    fails(capsys, ["run", spec, "--quiet"], key, absent=[tmp_path / "run"])


def test_calib_images_default_and_supernet_subset(tmp_path, capsys):
    # the default (1024) is more than the synthetic split holds: it uses all of it, as before
    assert main(["validate", str(job(tmp_path, data={"name": "synthetic"}, qat={"epochs": 1}))]) == 0
    capsys.readouterr()
    spec = job(tmp_path, data={"name": "synthetic"}, supernet={"train_images": 100, "calib_images": 200})
    fails(capsys, ["validate", spec], "supernet.calib_images", "supernet.train_images", "holds only 100")


# 6. non-finite checkpoint weights


def test_nan_checkpoint(tmp_path, capsys, fp32):
    from quantsearch.train import load_checkpoint
    from quantsearch.train.checkpoint import save_checkpoint

    ckpt = load_checkpoint(fp32)
    name = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][name] = torch.full_like(ckpt["state_dict"][name], float("nan"))
    bad = tmp_path / "nan.pt"
    save_checkpoint(bad, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match=f"has non-finite values in '{name}'; retrain or restore it"):
        load_checkpoint(bad)
    fails(capsys, ["eval", "--checkpoint", bad], name, "non-finite")
    out = tmp_path / "out"
    fails(capsys, ["qat", "--config", "uniform:W4A4", "--checkpoint", bad, "--out", out], name, absent=[out])
    fails(capsys, ["validate", job(tmp_path, dqss={"checkpoint": str(bad)})], name, absent=[tmp_path / "run"])


# 7. QUANTSEARCH_DATA set but holding no dataset


def test_quantsearch_data_without_dataset(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("QUANTSEARCH_DATA", str(empty))
    line = fails(capsys, ["data", "info", "--data", "fashion-mnist"], f"QUANTSEARCH_DATA={empty}",
                 "holds no Fashion-MNIST", "train-images-idx3-ubyte")
    assert "unset it" in line
    spec = job(tmp_path, data={"name": "fashion-mnist"})
    fails(capsys, ["run", spec, "--quiet"], "QUANTSEARCH_DATA", absent=[tmp_path / "run"])
    monkeypatch.setenv("QUANTSEARCH_DATA", str(tmp_path / "nowhere"))
    from quantsearch.data import load_dataset

    with pytest.raises(DataError, match="does not exist"):
        load_dataset("fashion-mnist")
    monkeypatch.delenv("QUANTSEARCH_DATA")
    with pytest.raises(DataError, match=f"data.root {empty} holds no Fashion-MNIST"):
        load_dataset("fashion-mnist", root=str(empty))


# 8. output folders appear only once every input is valid


def test_no_output_before_inputs_are_valid(tmp_path, capsys):
    # a config the profile cannot deploy used to fail only after FP32 training
    spec = job(tmp_path, qat={"config": "uniform:W4A4", "profile": "tensorrt-int8"})
    fails(capsys, ["run", spec, "--quiet"], "tensorrt-int8", absent=[tmp_path / "run"])
    # so did a checkpoint the spec names but that is missing
    spec = job(tmp_path, dqss={"checkpoint": str(tmp_path / "none.pt")})
    fails(capsys, ["run", spec, "--quiet"], "does not exist", absent=[tmp_path / "run"])
    fails(capsys, ["supernet", "train", spec, "--local", "--quiet", "--set", "supernet.checkpoint=none.pt"],
          "does not exist", absent=[tmp_path / "run"])


# 9. progress off a terminal: one line per phase


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_lines_when_not_a_terminal(capsys):
    from quantsearch.train.progress import epoch_progress

    s = _Stream(False)
    with epoch_progress("fp32 epoch 1/4", 3, stream=s) as tick:
        for i, loss in enumerate((0.9, 0.6, 0.412)):
            tick(i, loss)
    lines = s.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("fp32 epoch 1/4: 3/3 steps, loss 0.412, ")
    assert lines[0][-1] == "s"
    s = _Stream(False)
    with epoch_progress("qat", 3, stream=s, interval=0.0) as tick:
        for i in range(3):
            tick(i, 1.0)
    assert s.getvalue().splitlines()[0].startswith("qat: 1/3 steps")
    assert len(s.getvalue().splitlines()) == 3
    s = _Stream(False)
    with epoch_progress("off", 3, enabled=False, stream=s) as tick:
        tick(0, 1.0)
    assert s.getvalue() == ""
    s = _Stream(True)  # a terminal: the rich bar, no plain lines
    with epoch_progress("bar", 2, stream=s) as tick:
        tick(0, 1.0)
    assert s.getvalue() == ""
    with epoch_progress("stdout", 1) as tick:  # default stream: sys.stdout (captured, not a terminal)
        tick(0, 0.5)
    assert "stdout: 1/1 steps, loss 0.500" in capsys.readouterr().out


# 10. --device on every command that runs models


def test_device_cuda_without_gpu_fails_first(tmp_path, capsys, monkeypatch, fp32):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    spec = job(tmp_path)
    for argv in (["train", "--data", "synthetic", "--out", out],
                 ["eval", "--checkpoint", fp32],
                 ["qat", "--config", "uniform:W4A4", "--checkpoint", fp32, "--out", out],
                 ["calibrate", "--checkpoint", fp32, "--method", "maxabs", "--out", out],
                 ["dqss", "--checkpoint", fp32, "--bits", "4", "--out", out],
                 ["run", spec, "--quiet"],
                 ["supernet", "train", spec, "--local", "--quiet"]):
        fails(capsys, [*argv, "--device", "cuda"], "device 'cuda'", "--device cpu", absent=[out, tmp_path / "run"])
    fails(capsys, ["eval", "--checkpoint", fp32, "--device", "tpu"], "device 'tpu' is not one of")
    fails(capsys, ["run", spec, "--device", "cuda:x"], "device", "cuda:x")


def test_device_is_passed_on(tmp_path, capsys, monkeypatch, fp32):
    import contextlib

    import quantsearch.dqss
    import quantsearch.tracking
    import quantsearch.train.ptq

    seen = {}

    class NoTracker:  # no MLflow store: this test is about the device only
        uri = "none"

        def __init__(self, spec):
            seen["spec_device"] = spec.device

        def parent(self, tags=None):
            return contextlib.nullcontext(self)

    def fake(name):
        def record(*args, **kwargs):
            seen[name] = kwargs.get("device")
            raise ConfigError("stop here")
        return record

    monkeypatch.setattr(quantsearch.train.ptq, "calibrate_ptq", fake("calibrate"))
    monkeypatch.setattr(quantsearch.dqss, "run_dqss", fake("dqss"))
    monkeypatch.setattr(quantsearch.tracking, "JobTracker", NoTracker)
    fails(capsys, ["calibrate", "--checkpoint", fp32, "--method", "maxabs", "--device", "cpu",
                   "--out", tmp_path / "c"], "stop here")
    fails(capsys, ["dqss", "--checkpoint", fp32, "--bits", "4", "--device", "cpu", "--calib-images", "64",
                   "--out", tmp_path / "d"], "stop here")
    assert seen == {"calibrate": torch.device("cpu"), "dqss": torch.device("cpu"), "spec_device": "cpu"}
    assert main(["eval", "--checkpoint", fp32, "--device", "cpu"]) == 0
    assert "top-1" in capsys.readouterr().out
