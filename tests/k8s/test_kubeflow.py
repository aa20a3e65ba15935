"""The Kubeflow pipeline (k8s/kubeflow/pipeline.py): `quantsearch k8s pipeline` compiles it offline (kfp in this
interpreter, else .venv-kfp from `make kfp`); the compiled YAML has one step per stage of the spec, in order, each
`quantsearch run /jobs/<spec> --only <stage>` in the gpu overlay's pinned image on the shared PVC, GPUs on the
training steps; a broken pipeline fails the policy check."""

from __future__ import annotations

import copy
import importlib.util
import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.manifests import (
    K8S_MARKS,
    ROOT,
    allows,
    pipeline_steps,
    pipeline_violations,
    pod_specs,
    render,
    step_argv,
)

pytestmark = K8S_MARKS

PIPELINE_PY = ROOT / "k8s" / "kubeflow" / "pipeline.py"
JOB = ROOT / "jobs" / "demo.yaml"


def _pipeline_module():
    spec = importlib.util.spec_from_file_location("kfp_pipeline_under_test", PIPELINE_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports kfp only when compiling: loads without it
    return module


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> list[dict[str, Any]]:
    from quantsearch.cli import main

    out = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    assert main(["k8s", "pipeline", "--out", str(out), "--job", str(JOB)]) == 0
    assert not [p for p in out.parent.iterdir() if p != out], "a temporary file was left beside the pipeline"
    return [d for d in yaml.safe_load_all(out.read_text()) if d]


def _gpu_stages() -> tuple[str, ...]:
    return tuple(_pipeline_module().GPU_STAGES)


def test_pipeline_file_imports_only_kfp_and_stdlib():
    import ast
    import sys

    tree = ast.parse(PIPELINE_PY.read_text())
    roots = {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    roots |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert roots - {"__future__"} - set(sys.stdlib_module_names) == {"kfp"}


def test_stages_match_the_runner():
    from quantsearch.pipeline import STAGES

    module = _pipeline_module()
    assert tuple(module.STAGES) == STAGES
    assert {"fp32", "qat", "dqss", "supernet"} <= set(module.GPU_STAGES) < set(STAGES)


def test_one_step_per_stage_in_order(compiled):
    from quantsearch.config import load_job
    from quantsearch.pipeline import STAGES, configured_stages

    steps = pipeline_steps(compiled)
    wanted = configured_stages(load_job(JOB))
    assert wanted == list(STAGES), "the demo runs every stage: the test covers them all"
    assert [s["display"] for s in steps] == wanted
    for before, step in itertools.pairwise(steps):
        assert step["deps"] == [before["task"]], f"{step['display']} must run after {before['display']} only"


def test_steps_run_one_stage_of_the_spec(compiled):
    from quantsearch.cli import build_parser
    from quantsearch.config import load_job

    gpu = _gpu_stages()
    for step in pipeline_steps(compiled):
        argv = step_argv(step)
        args = build_parser().parse_args(argv[1:])  # exits (SystemExit) on an option the CLI lacks
        assert argv[0] == "quantsearch"
        assert (args.command, args.job, args.only) == ("run", "/jobs/demo.yaml", step["display"])
        sets = dict(s.split("=", 1) for s in args.set)
        assert sets["output_dir"] == "/data/runs/kfp-demo"
        assert sets["scaling.run_name"] == "kfp-demo"
        assert sets["scaling.storage_path"].startswith("/data/")
        on_gpu = step["display"] in gpu
        assert sets["device"] == ("cuda" if on_gpu else "cpu")
        assert sets["scaling.use_gpu"] == ("true" if on_gpu else "false")
        spec = load_job(JOB, args.set)
        assert str(spec.output_dir) == "/data/runs/kfp-demo"


def test_gpus_on_the_training_steps_as_the_gpu_overlay_places_them(compiled):
    from quantsearch.config import load_job

    worker = render("gpu")
    rc = next(d for d in worker if d["kind"] == "RayCluster")
    wspec = rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    train_workers = load_job(JOB).scaling.workers
    for step in pipeline_steps(compiled):
        acc = step["container"]["resources"].get("accelerator")
        if step["display"] not in _gpu_stages():
            assert acc is None, step["display"]
            assert "nodeSelector" not in step["k8s"]
            continue
        assert acc["resourceType"] == "nvidia.com/gpu"
        # one GPU per Ray Train worker for the supernet (Ray runs inside the step's pod), one for other training
        assert int(acc["resourceCount"]) == (max(1, train_workers) if step["display"] == "supernet" else 1)
        assert step["k8s"]["nodeSelector"]["labels"] == wspec["nodeSelector"]
        tol = step["k8s"]["tolerations"]
        assert [{k: t[k] for k in ("key", "operator", "effect")} for t in tol] == wspec["tolerations"]


def test_image_is_the_gpu_overlays_pinned_one(compiled):
    images = {c["image"] for d in render("gpu") for _, _, s in pod_specs(d) for c in s["containers"]
              if "quantsearch/quantsearch" in c["image"]}
    assert {s["container"]["image"] for s in pipeline_steps(compiled)} == images == {
        "ghcr.io/quantsearch/quantsearch:0.1.0-cuda12.8"}


def test_steps_share_the_overlays_volume_secret_and_network_policy(compiled):
    docs = render("gpu")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    mlflow = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    mlflow_labels = mlflow["spec"]["template"]["metadata"]["labels"]
    for step in pipeline_steps(compiled):
        k = step["k8s"]
        assert [(m["constant"], m["mountPath"]) for m in k["pvcMount"]] == [("quantsearch-data", "/data")]
        assert ("PersistentVolumeClaim", "quantsearch-data") in names
        assert [m["configMapName"] for m in k["configMapAsVolume"]] == ["quantsearch-jobs"]
        assert ("ConfigMap", "quantsearch-jobs") in names
        assert {s["secretName"] for s in k["secretAsEnv"]} == {"mlflow-auth"}
        env = {e["name"]: e["value"] for e in step["container"]["env"]}
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        labels = {**k["podMetadata"]["labels"], "workflows.argoproj.io/workflow": "quantsearch-kfp-demo-abc"}
        assert allows(policies, labels, mlflow_labels, 5000), "the gpu overlay must let the steps reach MLflow"
        assert {"/tmp", "/dev/shm"} <= {m["mountPath"] for m in k["emptyDirMounts"]}


def test_compiled_pipeline_meets_the_policy(compiled):
    assert pipeline_violations(compiled, _gpu_stages()) == []


def _mutated(compiled, stage: str, change) -> list[str]:
    docs = copy.deepcopy(compiled)
    change(next(s for s in pipeline_steps(docs) if s["display"] == stage))
    return pipeline_violations(docs, _gpu_stages())


@pytest.mark.parametrize(("stage", "expected"), [
    ("supernet", "without an nvidia.com/gpu request"),
    ("qat", "is not pinned"),
    ("export", "is not pinned"),
    ("dqss", "not `quantsearch run /jobs/<spec> --only dqss`"),
    ("sample", "the shared PVC is not mounted"),
    ("fp32", "does not tolerate"),
    ("search", "caching on"),
    ("predictor", "no resourceMemoryLimit"),
])
def test_policy_bites(compiled, stage, expected):
    def change(step):
        c, k = step["container"], step["k8s"]
        if "nvidia" in expected:
            del c["resources"]["accelerator"]
        elif "pinned" in expected:
            repo = "ghcr.io/quantsearch/quantsearch"
            c["image"] = f"{repo}:latest" if stage == "qat" else repo
        elif "--only" in expected:
            c["args"] = [a for a in c["args"] if a not in ("--only", "dqss")]
        elif "PVC" in expected:
            k["pvcMount"] = []
        elif "tolerate" in expected:
            k["tolerations"] = []
        elif "caching" in expected:
            step["caching"]["enableCache"] = True
        else:
            del c["resources"]["resourceMemoryLimit"]

    problems = _mutated(compiled, stage, change)
    assert len(problems) == 1, problems
    assert expected in problems[0], problems


def test_cli_refuses_what_would_break_the_pipeline(tmp_path, capsys, monkeypatch):
    import quantsearch.k8s_pipeline as k8s_pipeline
    from quantsearch.cli import main

    out = tmp_path / "p.yaml"
    outside = tmp_path / "demo.yaml"
    outside.write_text(JOB.read_text())
    cases = [
        (["--image", "ghcr.io/quantsearch/quantsearch:latest"], "is not pinned"),
        (["--image", "ghcr.io/quantsearch/quantsearch"], "is not pinned"),
        (["--job", str(outside)], "put the spec in"),
        (["--set", "device=cpu"], "the pipeline sets device itself"),
        (["--run-name", "Not_A_Name"], "must be lowercase"),
        (["--set", "training.epochs=0"], "training.epochs"),
    ]
    for extra, message in cases:
        assert main(["k8s", "pipeline", "--out", str(out), "--job", str(JOB), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err, (extra, err)
        assert len(err.strip().splitlines()) == 1, err
    assert main(["k8s", "pipeline", "--out", str(tmp_path / "p.json")]) == 2
    assert ".yaml" in capsys.readouterr().err
    # no kfp anywhere: one line naming the install
    monkeypatch.setattr(k8s_pipeline, "kfp_in_process", lambda: False)
    monkeypatch.setattr(k8s_pipeline, "kfp_python", lambda root: None)
    assert main(["k8s", "pipeline", "--out", str(out), "--job", str(JOB)]) == 2
    assert "pip install 'quantsearch[kfp]'" in capsys.readouterr().err
    assert not out.exists()


def test_kfp_python_names_an_existing_interpreter(monkeypatch, tmp_path):
    import quantsearch.k8s_pipeline as k8s_pipeline
    from quantsearch.errors import ConfigError

    monkeypatch.setenv(k8s_pipeline.KFP_PYTHON_ENV, str(tmp_path / "nope" / "python"))
    with pytest.raises(ConfigError, match="does not exist"):
        k8s_pipeline.kfp_python(ROOT)
    monkeypatch.delenv(k8s_pipeline.KFP_PYTHON_ENV)
    venv = ROOT / k8s_pipeline.KFP_VENV / "bin" / "python"
    assert k8s_pipeline.kfp_python(ROOT) == (str(venv) if venv.is_file() else None)


def test_docs_name_the_command():
    readme = (ROOT / "k8s" / "README.md").read_text()
    assert "quantsearch k8s pipeline --out" in readme
    assert "--only" in readme
    assert "quantsearch k8s pipeline" in (ROOT / "README.md").read_text()
    assert Path(ROOT / "Makefile").read_text().count("$(KFP_STAMP)") >= 2
