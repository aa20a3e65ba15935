"""mypy over the package, as pyproject configures it: strict on quant/, space/ and dqss/, lenient elsewhere."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STRICT = {"quantsearch.quant.*", "quantsearch.space.*", "quantsearch.dqss.*"}


def test_mypy_is_strict_where_the_maths_lives():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    strict = [o for o in cfg["overrides"] if set(o["module"]) >= STRICT]
    assert strict, "pyproject's mypy overrides no longer cover quant/, space/ and dqss/"
    for flag in ("disallow_untyped_defs", "disallow_untyped_calls", "disallow_any_generics", "warn_return_any"):
        assert strict[0].get(flag) is True, flag


def test_mypy_passes_on_the_package():
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
