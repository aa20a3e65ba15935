from pathlib import Path

import pytest
from quantsearch.config import JobSpec, apply_overrides, load_job, parse_override, validate_spec
from quantsearch.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_valid():
    spec = JobSpec()
    assert spec.data.name == "fashion-mnist"
    assert spec.model.name == "resnet8"
    assert spec.qat is None


def test_unknown_key_names_nearest_valid_key(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("training:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as exc:
        load_job(p)
    msg = str(exc.value)
    assert "training.epoch" in msg
    assert "'epochs'" in msg
    assert "\n" not in msg


def test_unknown_top_level_key_lists_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'zzz'.*valid keys"):
        validate_spec({"zzz": 1})


def test_invalid_value_is_one_line():
    with pytest.raises(ConfigError, match=r"training.epochs"):
        validate_spec({"training": {"epochs": 0}})


def test_overrides_parse_yaml_values():
    assert parse_override("training.lr=0.5") == (["training", "lr"], 0.5)
    raw = apply_overrides({"training": {"epochs": 1}}, ["training.epochs=3", "qat.config=uniform:W2A2", "name=x"])
    spec = validate_spec(raw)
    assert spec.training.epochs == 3
    assert spec.qat.target.config == "uniform:W2A2"
    assert spec.name == "x"
    with pytest.raises(ConfigError):
        parse_override("nokey")


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        load_job(bad)
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_job(tmp_path / "none.yaml")


@pytest.mark.parametrize("job", sorted((ROOT / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_jobs_validate(job):
    assert isinstance(load_job(job), JobSpec)


def test_old_flat_keys_load_into_their_new_sections():
    spec = validate_spec({
        "training": {"device": "cpu"},
        "qat": {"config": "uniform:W2A2", "profile": "tflite-int8", "calib_images": 64, "epochs": 2},
        "dqss": {"config": "uniform:W3A3", "calib_images": 32, "iters": 5},
        "supernet": {"epochs": 1, "workers": 2, "use_gpu": False, "run_name": "r", "storage_path": "s",
                     "max_failures": 3, "num_to_keep": 4}})
    assert spec.device == "cpu"
    assert (spec.qat.target.config, spec.qat.target.profile, spec.qat.target.calib_images) == (
        "uniform:W2A2", "tflite-int8", 64)
    assert spec.qat.epochs == 2
    assert spec.dqss.target.config == "uniform:W3A3"
    assert spec.dqss.target.calib_images == 32
    assert spec.scaling.model_dump() == {"workers": 2, "use_gpu": False, "run_name": "r", "storage_path": "s",
                                         "max_failures": 3, "num_to_keep": 4, "placement_strategy": "PACK"}
    assert spec.supernet.epochs == 1
    # what a spec dumps is the new layout, and it loads back to the same spec
    dumped = spec.model_dump()
    assert "config" not in dumped["qat"]
    assert "workers" not in dumped["supernet"]
    assert validate_spec(dumped) == spec
    # and overrides may use either spelling
    assert validate_spec(apply_overrides({}, ["supernet.workers=1"])).scaling.workers == 1
    assert validate_spec(apply_overrides({}, ["qat.target.config=uniform:W8A8"])).qat.target.config == "uniform:W8A8"


def test_a_key_given_in_both_places_names_the_new_one():
    with pytest.raises(ConfigError, match=r"'qat.config' moved to 'qat.target.config'"):
        validate_spec({"qat": {"config": "uniform:W2A2", "target": {"config": "uniform:W4A4"}}})
    with pytest.raises(ConfigError, match=r"'supernet.workers' moved to 'scaling.workers'"):
        validate_spec({"supernet": {"workers": 2}, "scaling": {"workers": 1}})
    from quantsearch.config import SupernetSpec, make_section

    with pytest.raises(ConfigError, match=r"scaling.workers"):
        make_section(SupernetSpec, "supernet", workers=2)  # the section alone cannot move it


def test_unknown_keys_suggest_old_and_new_names():
    with pytest.raises(ConfigError, match=r"unknown key 'qat.confg' \(did you mean 'config'\?\)"):
        validate_spec({"qat": {"confg": "uniform:W4A4"}})
    with pytest.raises(ConfigError, match=r"unknown key 'scaling.worker' \(did you mean 'workers'\?\)"):
        validate_spec({"scaling": {"worker": 2}})


def test_calibrator_names_come_from_the_registry():
    from quantsearch.config import DQSSSpec, SupernetSpec
    from quantsearch.quant import CALIBRATORS

    assert set(DQSSSpec().candidates) <= set(CALIBRATORS)
    with pytest.raises(ConfigError, match=r"dqss.candidates.*did you mean 'admm'"):
        validate_spec({"dqss": {"candidates": ["maxabs", "adm"]}})
    with pytest.raises(ConfigError, match=r"searches a layer's output"):
        validate_spec({"supernet": {"init_calibrator": "easyquant"}})
    assert SupernetSpec(init_calibrator="torchao-minmax").init_calibrator == "torchao-minmax"


def test_fp32_checkpoint_is_the_stage_s_or_the_job_s():
    spec = validate_spec({"output_dir": "out", "dqss": {"checkpoint": "x/model.pt"}})
    assert spec.fp32_checkpoint() == Path("out/fp32/model.pt") == spec.fp32_checkpoint("supernet")
    assert spec.fp32_checkpoint("dqss") == Path("x/model.pt")
    assert spec.fp32_checkpoint("qat") == spec.fp32_checkpoint()
