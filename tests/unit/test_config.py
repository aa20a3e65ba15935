from pathlib import Path

import pytest
from quantsearch.config import JobSpec, apply_overrides, load_job, parse_override, validate_spec
from quantsearch.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_valid():
    spec = JobSpec()
    assert spec.data.name == "fashion-mnist" and spec.model.name == "resnet8" and spec.qat is None


def test_unknown_key_names_nearest_valid_key(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("training:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as exc:
        load_job(p)
    msg = str(exc.value)
    assert "training.epoch" in msg and "'epochs'" in msg and "\n" not in msg


def test_unknown_top_level_key_lists_keys():
    with pytest.raises(ConfigError, match="unknown key 'zzz'.*valid keys"):
        validate_spec({"zzz": 1})


def test_invalid_value_is_one_line():
    with pytest.raises(ConfigError, match="training.epochs"):
        validate_spec({"training": {"epochs": 0}})


def test_overrides_parse_yaml_values():
    assert parse_override("training.lr=0.5") == (["training", "lr"], 0.5)
    raw = apply_overrides({"training": {"epochs": 1}}, ["training.epochs=3", "qat.config=uniform:W2A2", "name=x"])
    spec = validate_spec(raw)
    assert spec.training.epochs == 3 and spec.qat.config == "uniform:W2A2" and spec.name == "x"
    with pytest.raises(ConfigError):
        parse_override("nokey")


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_job(tmp_path / "none.yaml")


@pytest.mark.parametrize("job", sorted((ROOT / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_jobs_validate(job):
    assert isinstance(load_job(job), JobSpec)
