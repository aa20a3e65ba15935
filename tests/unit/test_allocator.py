"""The host allocator setting: applied once per process on glibc, skipped when the user opts out or set glibc's own
MALLOC_* variables. Each case runs in a fresh interpreter (the setting is process-wide and applied once)."""

import os
import subprocess
import sys

import pytest
from quantsearch.allocator import USER_VARIABLES

CODE = ("from quantsearch.allocator import tune_host_allocator as t; a = t(); b = t(); "
        "assert a == b; print(a)")


def _run(**env: str) -> str:
    full = {k: v for k, v in os.environ.items() if k not in USER_VARIABLES}
    out = subprocess.run([sys.executable, "-c", CODE], env={**full, **env}, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_applied_once_on_glibc():
    assert _run() == "True"


@pytest.mark.parametrize("env", [{"QUANTSEARCH_MALLOC_TUNING": "0"}, {"MALLOC_MMAP_THRESHOLD_": "131072"},
                                 {"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"},
                                 {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}])
def test_left_alone_when_the_user_chose(env):
    assert _run(**env) == "False"


def test_the_cli_applies_it(monkeypatch):
    """Every command runs with it (Ray workers call it themselves: test_layering keeps ray out of here)."""
    from quantsearch import cli

    calls = []
    monkeypatch.setattr(cli, "tune_host_allocator", lambda: calls.append(1) or True)
    assert cli.main(["profiles", "list"]) == 0
    assert calls == [1]


def test_user_choice_reaches_ray_workers(monkeypatch):
    """What the driver's environment chose travels to workers in ray.init's runtime_env (they do not inherit it)."""
    from quantsearch.allocator import user_choice

    for k in USER_VARIABLES:
        monkeypatch.delenv(k, raising=False)
    assert user_choice() == {}
    monkeypatch.setenv("QUANTSEARCH_MALLOC_TUNING", "0")
    assert user_choice() == {"QUANTSEARCH_MALLOC_TUNING": "0"}
