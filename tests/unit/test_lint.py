import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    r = subprocess.run([ruff, "check", "platform", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_platform_holds_only_the_package():
    # platform/ must not become a package (it would shadow the stdlib's platform); build metadata may sit beside
    names = sorted(p.name for p in (ROOT / "platform").iterdir() if not p.name.endswith(".egg-info"))
    assert names == ["quantsearch"]


def test_lint_and_test_habits_stay_configured():
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
    assert {"UP", "SIM", "RUF", "PT"} <= set(cfg["ruff"]["lint"]["select"])
    pytest_cfg = cfg["pytest"]["ini_options"]
    assert "--strict-markers" in pytest_cfg["addopts"]
    assert {m.split(":")[0] for m in pytest_cfg["markers"]} >= {"slow", "ray", "mlflow", "gpu"}
