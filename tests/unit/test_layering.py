"""Habits the architecture relies on (DESIGN.md): the import order between layers, and a lean `import quantsearch`.

Import order (a module imports only from rows above it; siblings in one row do not import each other):
    errors/config -> data, models -> quant -> space -> train -> supernet, dqss -> predictor -> search -> export
    -> tracking, distributed -> pipeline -> cli
Every import counts: module level, inside functions, under TYPE_CHECKING. Ray only in distributed/, MLflow only in
tracking/. The one sanctioned exception: config's name checks look the names up, at validation time, in the
registries that own them (datasets, models, backend profiles, calibrators, subnet configs) -- inside functions,
never at module level.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "platform" / "quantsearch"

# DESIGN.md's rows; its first row (errors/config) in the order its modules import each other
ROWS = [
    {"errors"},
    {"_util", "allocator"},
    {"device"},
    {"config"},
    {"data", "models"},
    {"quant"},
    {"space"},
    {"train"},
    {"supernet", "dqss"},
    {"predictor"},
    {"search"},
    {"export", "stages"},
    {"tracking", "distributed", "resume", "summary"},
    {"pipeline"},
    {"k8s_pipeline"},
    {"cli"},
    {"__main__"},
]
RANK = {name: i for i, row in enumerate(ROWS) for name in row}
# third-party packages only one part of quantsearch may import
ONLY_IN = {"ray": {"distributed"}, "mlflow": {"tracking"}}
# config validates names against the registries below it, lazily (inside its check functions)
REGISTRY_LOOKUPS = {"quantsearch.data.datasets", "quantsearch.models", "quantsearch.quant.profiles",
                    "quantsearch.quant.registry", "quantsearch.space.subnet"}


def _part(module: str) -> str:
    """The top-level part of quantsearch a dotted module belongs to: 'quantsearch.quant.kl' -> 'quant'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """Every module `module` imports (absolute names, any nesting), with line numbers and whether the import sits
    at module level (outside any function)."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                   for n in ast.walk(f) if n is not f}
    found = []
    for node in ast.walk(tree):
        top = id(node) not in in_function
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((name, node.lineno, top))
            # `from quantsearch import dqss` imports the subpackage
            if name == "quantsearch":
                found += [(f"quantsearch.{alias.name}", node.lineno, top) for alias in node.names
                          if (PKG / alias.name).exists() or (PKG / f"{alias.name}.py").exists()]
    return found


def _violations() -> list[str]:
    bad = []
    for module, path in _modules().items():
        part = _part(module)
        if part == "":  # the package root re-exports lazily; it may name anything
            continue
        assert part in RANK, f"{module} is in no row of DESIGN.md's import order; add its part to ROWS"
        for name, line, top_level in _imports(module, path):
            where = f"{path.relative_to(PKG.parent)}:{line}"
            top = name.split(".")[0]
            if top in ONLY_IN and part not in ONLY_IN[top]:
                bad.append(f"{where} imports {name}; only {sorted(ONLY_IN[top])} may import {top}")
            if top != "quantsearch" or name == "quantsearch":
                continue  # the root (e.g. __version__) is importable from anywhere
            other = _part(name)
            if other == part or (part == "config" and name in REGISTRY_LOOKUPS and not top_level):
                continue
            if other not in RANK:
                bad.append(f"{where} imports {name}, which is in no row")
            elif RANK[other] >= RANK[part]:
                bad.append(f"{where} ({part}) imports {name} ({other}): not a row above")
    return bad


def test_every_import_follows_the_layer_order():
    bad = _violations()
    assert not bad, "imports against DESIGN.md's order:\n" + "\n".join(bad)


def test_the_checker_catches_function_level_and_type_checking_imports(tmp_path, monkeypatch):
    mod = tmp_path / "quantsearch"
    (mod / "quant").mkdir(parents=True)
    (mod / "quant" / "__init__.py").write_text("")
    (mod / "quant" / "bad.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from quantsearch.dqss import Strategy\n"
        "def f():\n    import ray\n    from quantsearch.train.loop import evaluate\n    from ..space import build\n")
    (mod / "config.py").write_text("from quantsearch.models import create\n"
                                   "def check(name):\n    from quantsearch.quant.profiles import get_profile\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", mod)
    bad = "\n".join(_violations())
    assert "quant.profiles" not in bad  # a registry lookup inside config's checks is the sanctioned exception
    for needle in ("imports quantsearch.dqss (dqss)", "imports ray", "imports quantsearch.train.loop (train)",
                   "imports quantsearch.space (space)", "config.py:1 (config) imports quantsearch.models"):
        assert needle in bad, bad


def _modules_after(code: str) -> set[str]:
    r = subprocess.run([sys.executable, "-c", f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"],
                       capture_output=True, text=True, check=True)
    return set(r.stdout.split())


def test_import_quantsearch_is_lean():
    mods = _modules_after("import quantsearch")
    assert not {"ray", "mlflow", "torch"} & mods  # names resolve on first use


@pytest.mark.parametrize("code", [
    "import quantsearch as qs\nqs.quantize, qs.calibrate, qs.dqss_search, qs.train_supernet, qs.Strategy, qs.Supernet",
    "import quantsearch.quant, quantsearch.space, quantsearch.train, quantsearch.dqss, quantsearch.supernet",
])
def test_the_core_never_imports_ray_or_mlflow(code):
    assert not {"ray", "mlflow"} & _modules_after(code)


def test_cli_help_does_not_import_torch():
    assert "torch" not in _modules_after("from quantsearch.cli import build_parser\nbuild_parser()")
