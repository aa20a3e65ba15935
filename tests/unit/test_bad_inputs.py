"""The bad-input corpus (tests/bad_inputs/cases.yaml): every case is a CLI command (or an API call) a user can get
wrong. Each must end in exit code 2 (or a typed QuantsearchError from the API) with exactly one line on stderr that
names the problem and the fix, no traceback, and nothing written anywhere under the case's folder."""

from __future__ import annotations

import gzip
import os
import pickle
import socket
import struct
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from quantsearch.cli import main
from quantsearch.errors import QuantsearchError

CORPUS = Path(__file__).resolve().parents[1] / "bad_inputs"
CASES: list[dict[str, Any]] = yaml.safe_load((CORPUS / "cases.yaml").read_text())

# the spec each `spec:` case is merged into: tiny, synthetic, CPU, its output_dir inside the case's folder
BASE_SPEC: dict[str, Any] = {"name": "bad", "device": "cpu", "output_dir": "run",
                             "data": {"name": "synthetic", "train_limit": 64},
                             "training": {"epochs": 1, "batch_size": 64}}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `extra` into a copy of `base` (mappings merge; anything else replaces)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the socket is: nothing listens there


def _write_idx(path: Path, arr: np.ndarray) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = struct.pack(">BBBB", 0, 0, codes[arr.dtype], arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.tobytes())


def _snapshot(*folders: Path) -> dict[str, float]:
    """Every file and folder under `folders` with its modification time."""
    seen: dict[str, float] = {}
    for folder in folders:
        for p in folder.rglob("*"):
            seen[str(p)] = p.stat().st_mtime_ns
    return seen


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, str]:
    """Inputs the cases point at, made once (a few seconds): checkpoints good and bad, foreign files, bad data."""
    from quantsearch.config import DataSpec, JobSpec, ModelSpec, TrainingSpec
    from quantsearch.data import prepare_data
    from quantsearch.dqss.strategy import LayerStrategy, Strategy
    from quantsearch.space.subnet import SubnetConfig
    from quantsearch.train import load_checkpoint, train_fp32
    from quantsearch.train.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("bad-input-fixtures")
    spec = JobSpec(device="cpu", data=DataSpec(name="synthetic", train_limit=64), model=ModelSpec(name="resnet8"),
                   training=TrainingSpec(epochs=1, batch_size=64))
    fp32 = train_fp32(spec, prepare_data(spec.data), d / "fp32", progress=False).checkpoint
    ckpt = load_checkpoint(fp32)
    payload = {k: v for k, v in ckpt.items() if k not in ("format", "version")}
    first = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    for name, value in (("nan", float("nan")), ("inf", float("inf"))):
        sd = dict(ckpt["state_dict"])
        sd[first] = torch.full_like(sd[first], value)
        save_checkpoint(d / f"{name}.pt", {**payload, "state_dict": sd})
    raw = fp32.read_bytes()
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (d / "empty.pt").write_bytes(b"")
    # not weights-only: an arbitrary object inside (unpickling it could run code)
    torch.save({**ckpt, "extra": types.SimpleNamespace(a=1)}, d / "pickle.pt")
    (d / "plain.pkl").write_bytes(pickle.dumps({"state_dict": {}}))
    torch.save({"state_dict": ckpt["state_dict"]}, d / "foreign.pt")  # a bare torch file, no quantsearch format
    # a PTQ checkpoint (W4A4 per-channel weights: what tensorrt-int8 cannot run) where an FP32 one is expected
    assert main(["calibrate", "--checkpoint", str(fp32), "--method", "maxabs", "--bits", "4", "--calib-images", "32",
                 "--test-limit", "32", "--out", str(d / "w4"), "--device", "cpu"]) == 0
    # an FP32 checkpoint of the 10-class, 16x16 digits set (another dataset and head than the synthetic 4 classes)
    dspec = JobSpec(device="cpu", data=DataSpec(name="digits", train_limit=64), model=ModelSpec(name="resnet8"),
                    training=TrainingSpec(epochs=1, batch_size=64))
    train_fp32(dspec, prepare_data(dspec.data), d / "digits", progress=False)
    # a strategy searched for another model (mobilenetv2-tiny's layers), pointing at the resnet8 weights
    sub = SubnetConfig.load(CORPUS / "files" / "subnet_mobilenet.json")
    layer = LayerStrategy("maxabs", "maxabs", "", False, 0.1, 0.0, (0.1,), None, (1.0, 0.0), (1.0, 0.0))
    Strategy(tuple((n, layer) for n, _ in sub.layers), sub, ("maxabs", "kl"), weights=str(fp32),
             input_shape=(1, 16, 16)).save(d / "strategy_mobilenet.json")
    # Fashion-MNIST IDX files whose images are 32x32 (the set is 28x28)
    idx = d / "fashion32"
    idx.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 10)):
        _write_idx(idx / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 32, 32), dtype=np.uint8))
        _write_idx(idx / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,), dtype=np.uint8))
    # ImageFolder trees: images of two sizes; a single class
    from PIL import Image

    for folder, sizes in (("mixed", {"cat": (8, 8), "dog": (10, 10)}), ("oneclass", {"cat": (8, 8)})):
        for cls, size in sizes.items():
            (d / folder / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(d / folder / cls / f"{i}.png")
    return {"fx": str(d), "fp32": str(fp32), "corpus": str(CORPUS / "files"), "closed_port": str(_closed_port())}


class _DuplicateClient:
    """Ray's JobSubmissionClient as a cluster answers a submission id it already holds (HTTP 400 + traceback)."""

    def __init__(self, address: str) -> None:
        self.address = address

    def submit_job(self, **kw: Any) -> str:
        sid = kw.get("submission_id")
        raise RuntimeError(
            "Request failed with status code 400: Traceback (most recent call last):\n  File \"job_head.py\", "
            f"line 419, in submit_job\nValueError: Job with submission_id {sid} already exists. Please use a "
            "different submission_id.\n.")


def _api_nan_activations(fx: dict[str, str]) -> None:
    import quantsearch as qs
    from quantsearch.space import build_model_from_checkpoint
    from quantsearch.train import load_checkpoint

    model = build_model_from_checkpoint(load_checkpoint(fx["fp32"])).eval()
    x = torch.full((4, 1, 16, 16), float("nan"))
    qmodel = qs.quantize(model, "W4A4", x)
    qs.calibrate(qmodel, [x], method="maxabs")


def _api_wrong_image_shape(fx: dict[str, str]) -> None:
    import quantsearch as qs
    from quantsearch.space import build_model_from_checkpoint
    from quantsearch.train import load_checkpoint

    model = build_model_from_checkpoint(load_checkpoint(fx["fp32"])).eval()
    qs.quantize(model, "W4A4", torch.zeros(2, 3, 16, 16))  # resnet8 on 1-channel images, given RGB


def _api_impossible_budget(fx: dict[str, str]) -> None:
    import quantsearch as qs
    from quantsearch.quant import get_profile
    from quantsearch.space import SearchSpace, build_model_from_checkpoint, layer_costs
    from quantsearch.train import load_checkpoint

    x = torch.zeros(2, 1, 16, 16)
    qmodel = qs.quantize(build_model_from_checkpoint(load_checkpoint(fx["fp32"])), "W8A8", x)
    space = SearchSpace.for_model(qmodel, get_profile("generic"))
    spec = qs.SearchSpec(budget={"bitops": 1.0}, population=4, generations=1)
    qs.search_subnets(space, layer_costs(qmodel, (1, 16, 16)), lambda cfgs: [0.5] * len(cfgs), spec, seed=0)


API = {"nan_activations": _api_nan_activations, "wrong_image_shape": _api_wrong_image_shape,
       "impossible_budget": _api_impossible_budget}


def _fill(text: str, values: dict[str, str]) -> str:
    for k, v in values.items():
        text = text.replace("{" + k + "}", v)
    return text


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input(case, fx, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_JOBS_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    values = {**fx, "tmp": str(tmp_path), "job": str(tmp_path / "job.yaml"), "out": str(tmp_path / "out")}
    for var, value in (case.get("env") or {}).items():
        monkeypatch.setenv(var, _fill(str(value), values))
    if "spec_text" in case:
        (tmp_path / "job.yaml").write_text(_fill(case["spec_text"], values))
    elif "spec" in case:
        spec = yaml.safe_load(_fill(yaml.safe_dump(case["spec"]), values))
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(_merge(BASE_SPEC, spec)))
    for name, text in (case.get("files") or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(_fill(text, values))
    if case.get("fake_ray") == "duplicate":
        import ray.job_submission

        monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", _DuplicateClient)
    before = _snapshot(tmp_path, Path(fx["fx"]))
    if "api" in case:
        with pytest.raises(QuantsearchError) as exc:
            API[case["api"]](fx)
        line = str(exc.value)
        assert type(exc.value).__name__ == case.get("raises", type(exc.value).__name__)
        assert "\n" not in line, line
    else:
        argv = [_fill(str(a), values) for a in case["argv"]]
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse's own errors
            code = stop.code
        err = capsys.readouterr().err
        assert code == 2, err
        assert "Traceback" not in err, err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        line = lines[0]
        assert line.startswith("quantsearch: error: "), line
    for needle in case["error"]:
        assert _fill(needle, values) in line, (needle, line)
    after = _snapshot(tmp_path, Path(fx["fx"]))
    assert after == before, sorted(set(after) ^ set(before)) or "a file changed"


def test_corpus_is_large_and_ids_are_unique():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 40
    assert all(c.get("error") for c in CASES)
    os.fspath(CORPUS)
