"""Build the wheel, install it into a fresh venv, run `quantsearch --help`: guards the platform/ layout."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_installs_and_runs(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True)
    wheels = list(dist.glob("quantsearch-*.whl"))
    assert len(wheels) == 1
    import zipfile

    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "quantsearch/cli.py" in names
    assert "quantsearch/quant/profiles.yaml" in names
    assert not any(n.startswith("platform/") for n in names)  # never shadow the stdlib's platform module
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # reuse the installed dependencies (torch is gigabytes): a .pth adds this venv's site-packages
    # without processing its .pth files, so the editable checkout of quantsearch is not visible
    py = str(venv / "bin" / "python")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", str(wheels[0])], check=True)
    r = subprocess.run([str(venv / "bin" / "quantsearch"), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "quantsearch" in r.stdout, r.stderr
    r = subprocess.run([py, "-c", "import quantsearch, platform; print(quantsearch.__file__); "
                        "print(platform.system())"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert str(venv) in r.stdout.splitlines()[0]
    assert r.stdout.splitlines()[1] == "Linux"
    r = subprocess.run([str(venv / "bin" / "quantsearch"), "profiles", "list"], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0
    assert "tensorrt-int8" in r.stdout
