import json
import subprocess
import sys
from pathlib import Path

import pytest
from quantsearch import __version__
from quantsearch.cli import main

ROOT = Path(__file__).resolve().parents[2]


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_and_version_via_python_m():
    r = subprocess.run([sys.executable, "-m", "quantsearch", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0
    assert __version__ in r.stdout
    r = subprocess.run([sys.executable, "-m", "quantsearch", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0
    assert "train" in r.stdout
    assert "qat" in r.stdout


def test_models_profiles_data_info(capsys):
    code, out, _ = run(["models", "list", "--reference-only"], capsys)
    assert code == 0
    assert "resnet8" in out
    assert "tv:" not in out
    code, out, _ = run(["profiles", "list"], capsys)
    assert code == 0
    assert "tflite-int8" in out
    code, out, _ = run(["data", "info", "--data", "synthetic"], capsys)
    assert code == 0
    assert "classes      4" in out


@pytest.mark.parametrize(("argv", "needle"), [
    (["train", "--modle", "x", "--out", "OUT"], "unrecognized arguments"),
    (["train", "--model", "resnet9", "--data", "synthetic", "--out", "OUT"], "did you mean 'resnet8'"),
    (["train", "--data", "fashion", "--out", "OUT"], "did you mean 'fashion-mnist'"),
    (["train", "--epochs", "0", "--data", "synthetic", "--out", "OUT"], "training.epochs"),
    (["train", "--set", "training.epoch=2", "--out", "OUT"], "did you mean 'epochs'"),
    (["eval", "--checkpoint", "OUT/none.pt"], "does not exist"),
    (["qat", "--config", "uniform:W9A9", "--checkpoint", "OUT/none.pt", "--out", "OUT"], "does not exist"),
])
def test_bad_arguments_one_line_exit_2_nothing_written(tmp_path, argv, needle):
    out = tmp_path / "out"
    argv = [a.replace("OUT", str(out)) for a in argv]
    r = subprocess.run([sys.executable, "-m", "quantsearch", *argv], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert needle in lines[0]
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_validate(tmp_path, capsys):
    code, out, _ = run(["validate", str(ROOT / "jobs" / "demo.yaml"), "--set", "data.name=digits"], capsys)
    assert code == 0
    assert "stages: fp32, qat" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("modle:\n  name: resnet8\n")
    code, _, err = run(["validate", str(bad)], capsys)
    assert code == 2
    assert "did you mean 'model'" in err


def test_train_eval_qat_end_to_end_on_synthetic(tmp_path, capsys):
    fp = tmp_path / "fp32"
    code, out, _ = run(["train", "--model", "resnet8", "--data", "synthetic", "--epochs", "2", "--out", str(fp),
                        "--quiet", "--set", "training.batch_size=64"], capsys)
    assert code == 0
    assert (fp / "model.pt").exists()
    fp_acc = json.loads((fp / "metrics.json").read_text())["test_acc"]
    assert fp_acc > 0.8
    code, out, _ = run(["eval", "--checkpoint", str(fp / "model.pt")], capsys)
    assert code == 0
    assert f"{100 * fp_acc:.2f}%" in out
    q = tmp_path / "qat"
    code, out, _ = run(["qat", "--config", "uniform:W4A4", "--checkpoint", str(fp / "model.pt"), "--out", str(q),
                        "--epochs", "1", "--calib-images", "128", "--quiet"], capsys)
    assert code == 0, out
    m = json.loads((q / "metrics.json").read_text())
    assert m["test_acc"] > 0.7
    assert m["config"] == "uniform:W4A4"
    code, out, _ = run(["eval", "--checkpoint", str(q / "model.pt")], capsys)
    assert code == 0
    assert f"{100 * m['test_acc']:.2f}%" in out
    assert "qat" in out
    # a config the profile cannot deploy is refused before anything is written
    code, _, err = run(["qat", "--config", "uniform:W4A4", "--profile", "tensorrt-int8", "--checkpoint",
                        str(fp / "model.pt"), "--out", str(tmp_path / "trt")], capsys)
    assert code == 2
    assert "tensorrt-int8" in err
    assert not (tmp_path / "trt").exists()


@pytest.mark.mlflow
def test_dqss_qat_cli_tracks_in_mlflow_and_eval_rebuilds_from_strategy(tmp_path, capsys):
    fp = tmp_path / "fp32"
    code, _, _ = run(["train", "--model", "resnet8", "--data", "synthetic", "--epochs", "1", "--out", str(fp),
                      "--quiet", "--set", "training.batch_size=64"], capsys)
    assert code == 0
    ck = str(fp / "model.pt")
    q = tmp_path / "dqss"
    code, out, err = run(["dqss", "--checkpoint", ck, "--mode", "qat", "--bits", "4", "--search-epochs", "0.5",
                        "--finetune-epochs", "0.5", "--calib-images", "128", "--easyquant-steps", "10", "--quiet",
                        "--out", str(q)], capsys)
    assert code == 0, err
    assert "DQSS-QAT uniform:W4A4" in out, err
    m = json.loads((q / "metrics.json").read_text())
    assert m["mode"] == "qat"
    assert m["finetune_seconds"] > 0
    code, out, _ = run(["eval", "--strategy", str(q / "strategy.json")], capsys)
    assert code == 0
    assert f"{100 * m['test_acc']:.2f}%" in out
    assert "DQSS-QAT" in out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{q / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("dqss").experiment_id])
    assert len(runs) == 1
    assert runs[0].data.tags["mode"] == "qat"
    assert runs[0].data.metrics["test_acc"] == pytest.approx(m["test_acc"])
    assert any(k.startswith("choice.") for k in runs[0].data.tags)
    # user errors: one line, exit 2, nothing written
    for argv, needle in [
        (["--mode", "ptq", "--bits", "4", "--profile", "tensorrt-int8"], "tensorrt-int8"),
        (["--mode", "qat", "--bits", "4", "--subsets", "2"], "--subsets"),
        (["--mode", "qat", "--bits", "4", "--search-epochs", "0"], "--search-epochs"),
    ]:
        bad = tmp_path / "bad"
        code, _, err = run(["dqss", "--checkpoint", ck, *argv, "--out", str(bad)], capsys)
        assert code == 2, err
        assert needle in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert not bad.exists(), err
    code, _, err = run(["eval"], capsys)
    assert code == 2
    assert "--strategy" in err
    (tmp_path / "x.json").write_text("{}")
    code, _, err = run(["eval", "--strategy", str(tmp_path / "x.json")], capsys)
    assert code == 2
    assert "not a DQSS strategy file" in err


def test_help_lists_the_calibrator_registry():
    from quantsearch.cli import METHOD_NAMES
    from quantsearch.quant import CALIBRATORS

    assert tuple(CALIBRATORS) == METHOD_NAMES  # spelled out in cli.py so that --help does not import torch
