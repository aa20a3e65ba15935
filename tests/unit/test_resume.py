"""Resumable pipeline: `quantsearch run` skips stages whose inputs are unchanged and outputs exist; --only, --from
and --force; a killed stage reruns; summary.md tells the story."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from quantsearch.cli import main
from quantsearch.config import JobSpec
from quantsearch.resume import content_hash, load_marker, marker_path, stage_inputs, stage_key
from quantsearch.summary import read_statuses


def _job(tmp_path: Path, **extra) -> Path:
    raw = {"name": "resume", "device": "cpu", "output_dir": str(tmp_path / "run"),
           "data": {"name": "synthetic", "val_size": 64, "train_limit": 192, "test_limit": 64},
           "model": {"name": "resnet8"}, "training": {"epochs": 1, "batch_size": 64},
           "qat": {"target": {"config": "uniform:W4A4", "calib_images": 64}, "epochs": 1, "batch_size": 64}, **extra}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(capsys, *argv: str) -> int:
    code = main(["run", *argv, "--quiet"])
    capsys.readouterr()
    return code


def test_rerun_skips_finished_stages_and_reruns_what_changed(tmp_path, capsys):
    job = _job(tmp_path)
    out = tmp_path / "run"
    assert _run(capsys, str(job)) == 0
    assert read_statuses(out) == {"fp32": "ran", "qat": "ran"}
    first = json.loads((out / "results.json").read_text())
    mtime = (out / "qat" / "model.pt").stat().st_mtime_ns
    summary = (out / "summary.md").read_text()
    assert "## Figures" in summary
    assert "LSQ QAT 1 ep" in summary
    assert "`qat/model.pt`" in summary
    assert "parent run" in summary

    # same spec: nothing reruns, the results are the stored ones
    assert _run(capsys, str(job)) == 0
    assert read_statuses(out) == {"fp32": "skipped (up to date)", "qat": "skipped (up to date)"}
    assert json.loads((out / "results.json").read_text()) == first
    assert (out / "qat" / "model.pt").stat().st_mtime_ns == mtime

    # a changed QAT section reruns QAT only
    assert _run(capsys, str(job), "--set", "qat.lr=0.002") == 0
    assert read_statuses(out) == {"fp32": "skipped (up to date)", "qat": "ran"}

    # killed during QAT: its marker is written only when it finished, so the rerun runs QAT again
    marker_path(out, "qat").unlink()
    assert _run(capsys, str(job), "--set", "qat.lr=0.002") == 0
    assert read_statuses(out) == {"fp32": "skipped (up to date)", "qat": "ran"}

    # --force reruns every stage; fp32 resumes from its finished checkpoint, so its files and token stay the same
    token = load_marker(out, "fp32").token
    assert _run(capsys, str(job), "--set", "qat.lr=0.002", "--force") == 0
    assert read_statuses(out) == {"fp32": "ran", "qat": "ran"}
    assert load_marker(out, "fp32").token == token


@pytest.mark.slow
def test_lost_output_reruns_the_stage(tmp_path, capsys):
    job = _job(tmp_path, qat=None)
    out = tmp_path / "run"
    assert _run(capsys, str(job), "--only", "fp32") == 0
    (out / "fp32" / "model.pt").unlink()
    assert _run(capsys, str(job)) == 0
    assert read_statuses(out) == {"fp32": "ran"}


@pytest.mark.slow
def test_only_and_from_run_the_named_stages(tmp_path, capsys):
    job = _job(tmp_path)
    out = tmp_path / "run"
    # --only qat before the FP32 model exists: one clear line, nothing written
    assert main(["run", str(job), "--only", "qat", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--only fp32" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert _run(capsys, str(job), "--only", "fp32") == 0
    assert read_statuses(out) == {"fp32": "ran"}
    assert _run(capsys, str(job), "--from", "qat") == 0
    assert read_statuses(out) == {"qat": "ran"}
    assert _run(capsys, str(job), "--only", "qat") == 0  # named: runs although up to date
    assert read_statuses(out) == {"qat": "ran"}
    assert _run(capsys, str(job)) == 0
    assert read_statuses(out) == {"fp32": "skipped (up to date)", "qat": "skipped (up to date)"}


@pytest.mark.parametrize(("argv", "words"), [
    (["--only", "serach"], ["unknown stage", "search"]),
    (["--only", "dqss"], ["no dqss section"]),
    (["--from", "export"], ["no export section"]),
    (["--only", "qat", "--from", "fp32"], ["not allowed with"]),
])
def test_stage_selection_errors(tmp_path, capsys, argv, words):
    job = _job(tmp_path)
    try:
        code = main(["run", str(job), *argv, "--quiet"])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_stage_key_follows_inputs(tmp_path):
    spec = JobSpec.model_validate(yaml.safe_load(_job(tmp_path).read_text()))
    inputs = stage_inputs(spec, "qat")
    assert inputs.upstream == ("fp32",)
    assert inputs.outputs[-1].name == "model.pt"
    key = stage_key(spec, inputs)
    assert stage_key(spec, inputs) == key  # deterministic
    changed = spec.model_copy(update={"qat": spec.qat.model_copy(update={"epochs": 2})})
    assert stage_key(changed, stage_inputs(changed, "qat")) != key
    # an FP32 checkpoint from elsewhere counts by its content
    ext = tmp_path / "fp32.pt"
    ext.write_bytes(b"one")
    named = spec.model_copy(update={"qat": spec.qat.model_copy(update={"checkpoint": str(ext)})})
    k1 = stage_key(named, stage_inputs(named, "qat"))
    ext.write_bytes(b"two")
    assert stage_key(named, stage_inputs(named, "qat")) != k1
    assert content_hash((tmp_path / "absent",)) != content_hash((ext,))


def test_failed_run_leaves_a_summary_naming_the_stage(tmp_path, capsys, monkeypatch):
    import quantsearch.train as train

    job = _job(tmp_path)
    out = tmp_path / "run"

    def boom(*args, **kwargs):
        raise RuntimeError("worker lost\nsecond line")

    monkeypatch.setattr(train, "train_qat", boom)
    with pytest.raises(RuntimeError):
        main(["run", str(job), "--quiet"])
    capsys.readouterr()
    text = (out / "summary.md").read_text()
    assert "FAILED**: stage qat: RuntimeError: worker lost" in text
    assert read_statuses(out) == {"fp32": "ran", "qat": "FAILED"}
    assert load_marker(out, "qat") is None
    assert load_marker(out, "fp32") is not None
