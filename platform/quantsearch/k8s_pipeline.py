"""`quantsearch k8s pipeline`: compile the Kubeflow pipeline (k8s/kubeflow/pipeline.py) for a job spec in jobs/.

The pipeline file imports only kfp, which pins protobuf and requests below this package's environment; so it runs
in-process where kfp (with kfp-kubernetes) imports, else in the interpreter QUANTSEARCH_KFP_PYTHON names or the
checkout's .venv-kfp (`make kfp`)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import yaml

from quantsearch.errors import ConfigError, QuantsearchError

PIPELINE_FILE = Path("k8s") / "kubeflow" / "pipeline.py"
KFP_PYTHON_ENV = "QUANTSEARCH_KFP_PYTHON"
KFP_VENV = ".venv-kfp"
INSTALL_HINT = "pip install 'quantsearch[kfp]' (or `make kfp`, which makes .venv-kfp)"
# the overrides each step sets itself (k8s/kubeflow/pipeline.py, step_argv)
STEP_KEYS = ("output_dir", "scaling.storage_path", "scaling.run_name", "device", "scaling.use_gpu")
DEFAULT_JOB = Path("jobs") / "demo.yaml"
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class PipelinePlan:
    """What the compiled pipeline runs: the spec as the pods see it, its stages, the run's name and GPUs."""

    job: str
    stages: tuple[str, ...]
    run_name: str
    supernet_gpus: int
    sets: tuple[str, ...]


def checkout_root() -> Path:
    """The quantsearch checkout holding k8s/kubeflow/pipeline.py: this package's, else the working directory."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / PIPELINE_FILE).is_file():
            return root
    raise ConfigError(f"{PIPELINE_FILE} not found: run `quantsearch k8s pipeline` from a quantsearch checkout")


def image_pinned(image: str) -> bool:
    """A digest, or a tag other than latest (what the manifests' policy asks of every image)."""
    if _DIGEST.search(image):
        return True
    last = image.rsplit("/", 1)[-1]
    return ":" in last and last.rsplit(":", 1)[1] not in ("", "latest")


def plan(job: str | Path, sets: Sequence[str], root: Path, run_name: str | None = None) -> PipelinePlan:
    """Validate the spec (with the steps' overrides) and derive the pipeline's stages and GPU count."""
    from quantsearch.config import load_job
    from quantsearch.pipeline import configured_stages

    path = Path(job)
    if path.resolve().parent != (root / "jobs").resolve():
        raise ConfigError(f"{job}: the pipeline's steps read /jobs/<name> (the quantsearch-jobs ConfigMap, built from "
                          f"jobs/): put the spec in {root / 'jobs'} and list it in jobs/Kustomization")
    for s in sets:
        key = s.split("=", 1)[0].strip()
        if key in STEP_KEYS:
            raise ConfigError(f"--set {s}: the pipeline sets {key} itself (the run folder on /data, cuda on GPU "
                              "steps); use --run-name to change where it writes")
    listed = yaml.safe_load((root / "jobs" / "Kustomization").read_text())["configMapGenerator"][0]["files"]
    if path.name not in listed:
        raise ConfigError(f"{job} is not in the quantsearch-jobs ConfigMap: add {path.name} to the files of "
                          "jobs/Kustomization")
    spec = load_job(path, list(sets))
    name = run_name or f"kfp-{spec.name}"
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 50:
        raise ConfigError(f"run name {name!r} must be lowercase letters, digits and '-' (a Kubeflow pipeline name); "
                          "pass --run-name")
    # what a GPU step adds must load too (a CPU step's device=cpu, use_gpu=false always does)
    load_job(path, [*sets, f"output_dir=/data/runs/{name}", "scaling.storage_path=/data/ray",
                    f"scaling.run_name={name}", "device=cuda", "scaling.use_gpu=true"])
    return PipelinePlan(job=f"/jobs/{path.name}", stages=tuple(configured_stages(spec)), run_name=name,
                        supernet_gpus=max(1, spec.scaling.workers), sets=tuple(sets))


def pipeline_argv(p: PipelinePlan, out: Path, image: str | None) -> list[str]:
    """The arguments of k8s/kubeflow/pipeline.py's command line for a plan."""
    argv = ["--out", str(out), "--job", p.job, "--stages", ",".join(p.stages), "--run-name", p.run_name,
            "--supernet-gpus", str(p.supernet_gpus)]
    if image:
        argv += ["--image", image]
    return argv + [a for s in p.sets for a in ("--set", s)]


def _load_pipeline_module(root: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("quantsearch_kfp_pipeline", root / PIPELINE_FILE)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{root / PIPELINE_FILE} cannot be loaded as a Python module; restore it from git")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kfp_in_process() -> bool:
    """Whether kfp and kfp-kubernetes import in this interpreter."""
    try:
        return importlib.util.find_spec("kfp") is not None and importlib.util.find_spec("kfp.kubernetes") is not None
    except ModuleNotFoundError:
        return False


def kfp_python(root: Path) -> str | None:
    """An interpreter with kfp: QUANTSEARCH_KFP_PYTHON, else the checkout's .venv-kfp; None when neither exists."""
    named = os.environ.get(KFP_PYTHON_ENV)
    if named:
        if not Path(named).is_file():
            raise ConfigError(f"{KFP_PYTHON_ENV}={named} does not exist; point it at a Python with kfp, or unset it")
        return named
    venv = root / KFP_VENV / "bin" / "python"
    return str(venv) if venv.is_file() else None


def compile_pipeline(job: str | Path, out: str | Path, sets: Sequence[str] = (), image: str | None = None,
                     run_name: str | None = None) -> Path:
    """Compile the pipeline for `job` to the YAML file `out` (whole or not at all); return its path."""
    if image is not None and not image_pinned(image):
        raise ConfigError(f"--image {image} is not pinned: give a tag other than latest, or a digest (@sha256:...)")
    out = Path(out)
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"--out {out} must name a .yaml file (the compiled pipeline)")
    if not out.absolute().parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.absolute().parent} does not exist; create it first")
    root = checkout_root()
    p = plan(job, sets, root, run_name)
    argv = pipeline_argv(p, out.absolute(), image)
    if kfp_in_process():
        _load_pipeline_module(root).main(argv)
        return out
    python = kfp_python(root)
    if python is None:
        raise ConfigError(f"kfp is not installed: {INSTALL_HINT}, or set {KFP_PYTHON_ENV} to a Python that has it")
    r = subprocess.run([python, str(root / PIPELINE_FILE), *argv], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise QuantsearchError(f"compiling {PIPELINE_FILE} with {python} failed: {last}")
    return out


def cmd_pipeline(args: argparse.Namespace) -> int:
    """`quantsearch k8s pipeline`: compile, print where the YAML went."""
    job = args.job or checkout_root() / DEFAULT_JOB
    out = compile_pipeline(job, args.out, args.set or [], args.image, args.run_name)
    sys.stdout.write(f"Kubeflow pipeline -> {out} (upload it in the Kubeflow Pipelines UI, or `kfp pipeline "
                     "create`; k8s/README.md)\n")
    return 0
