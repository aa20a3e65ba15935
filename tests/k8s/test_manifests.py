"""k8s/: every overlay renders, passes yamllint, the Kubernetes schemas (strict) and the KubeRay CRDs (strict),
meets the security rules, and runs job specs that exist in the image and in jobs/. Negative fixtures prove each
check fails on a manifest that breaks its rule."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.manifests import (
    CRD_DIR,
    K8S,
    K8S_MARKS,
    KUBERNETES_VERSION,
    OVERLAYS,
    ROOT,
    SHARED_CRD_DIR,
    allows,
    containers,
    crd_errors,
    entrypoint_argv,
    entrypoint_spec_and_sets,
    exposure_violations,
    load_docs,
    network_violations,
    pod_specs,
    pod_violations,
    rbac_violations,
    render,
)

pytestmark = K8S_MARKS

FIXTURES = Path(__file__).parent / "fixtures"
RAY_KINDS = {"RayCluster", "RayJob"}
EXPECTED_OVERLAYS = {"cpu-dev", "gpu"}
SECRET_NAMES = {"mlflow-postgres", "mlflow-auth"}


def _by_kind(docs, kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _one(docs, kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _expected(doc: dict[str, Any]) -> str:
    return doc["metadata"]["annotations"]["expect"]


# ---------------------------------------------------------------- render, lint, schemas

def test_overlays_exist():
    assert set(OVERLAYS) == EXPECTED_OVERLAYS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_everything(overlay):
    docs = render(overlay)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Namespace", "quantsearch"), ("RayCluster", "quantsearch"), ("RayJob", "quantsearch-demo"),
            ("RayJob", "quantsearch-supernet"), ("Deployment", "mlflow"), ("Service", "mlflow"),
            ("StatefulSet", "mlflow-postgres"), ("Service", "mlflow-postgres"), ("ConfigMap", "quantsearch-jobs"),
            ("ServiceAccount", "quantsearch-submitter"), ("Role", "quantsearch-submitter"),
            ("RoleBinding", "quantsearch-submitter"), ("NetworkPolicy", "default-deny"),
            ("PersistentVolumeClaim", "quantsearch-data"), ("PersistentVolumeClaim", "mlflow-artifacts")} <= kinds
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"quantsearch"}
    if overlay == "gpu":  # the CIFAR-10 RayJob and the Kubeflow pipeline's NetworkPolicies
        assert {("RayJob", "quantsearch-gpu-cluster"), ("NetworkPolicy", "kfp-workflow-egress"),
                ("NetworkPolicy", "kfp-step-to-mlflow"), ("NetworkPolicy", "mlflow-from-kfp-steps")} <= kinds


def _yamllint(*paths: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "yamllint", "--strict", "-f", "parsable", "-c", str(K8S / ".yamllint"),
                           *map(str, paths)], capture_output=True, text=True, cwd=ROOT)


def test_yamllint_clean():
    r = _yamllint(K8S, ROOT / "jobs" / "Kustomization")
    assert r.returncode == 0, r.stdout + r.stderr


def test_yamllint_bites(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: yes\n")  # a warning only: --strict makes it fail
    assert _yamllint(bad).returncode != 0
    bad.write_text("a: yes\nb:\n    - 1\nc: 1 \n")
    r = _yamllint(bad)
    assert r.returncode != 0
    assert "truthy" in r.stdout
    assert "trailing-spaces" in r.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_kinds_pass_kubernetes_schemas_strict(overlay):
    import kubernetes_validate

    for doc in render(overlay):
        if doc["kind"] in RAY_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} ({overlay}): {exc.message} at "
                        f"{'/'.join(map(str, exc.absolute_path))}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_resources_pass_kuberay_crds_strict(overlay):
    docs = [d for d in render(overlay) if d["kind"] in RAY_KINDS]
    assert {d["kind"] for d in docs} == RAY_KINDS
    errors = [e for d in docs for e in crd_errors(d)]
    assert not errors, "\n".join(errors)


def test_crds_are_the_shared_ones():
    for name in ("ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml"):
        assert (CRD_DIR / name).exists(), f"KubeRay CRD {name} missing under {CRD_DIR}; copy it from ../shared/k8s-crds"
        shared = SHARED_CRD_DIR / name
        if shared.exists():  # a clone outside the workspace has only the copy
            assert (CRD_DIR / name).read_bytes() == shared.read_bytes(), f"{name} differs from {shared}: copy it again"


@pytest.mark.parametrize("doc", load_docs(FIXTURES / "bad_schema.yaml"), ids=lambda d: d["metadata"]["name"])
def test_schema_checks_bite(doc):
    bare = copy.deepcopy(doc)
    del bare["metadata"]["annotations"]
    if doc["kind"] in RAY_KINDS:
        errors = crd_errors(bare)
        assert any(_expected(doc) in e for e in errors), errors
    else:
        import kubernetes_validate

        with pytest.raises(kubernetes_validate.ValidationError, match=re.escape(_expected(doc))):
            kubernetes_validate.validate(bare, KUBERNETES_VERSION, strict=True)


# ---------------------------------------------------------------- security policy

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_meets_the_security_rules(overlay):
    docs = render(overlay)
    pods = [p for d in docs for p in pod_specs(d)]
    # mlflow, postgres, RayCluster head + workers, each RayJob's head, workers and submitter
    rayjobs = _by_kind(docs, "RayJob")
    assert len(rayjobs) == {"cpu-dev": 2, "gpu": 3}[overlay]
    assert len(pods) == 2 + 2 + len(rayjobs) * 3
    problems = [v for where, _, spec in pods for v in pod_violations(where, spec)]
    problems += [v for d in docs for v in exposure_violations(d)]
    problems += rbac_violations(docs) + network_violations(docs)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", load_docs(FIXTURES / "bad_pods.yaml"), ids=lambda d: d["metadata"]["name"])
def test_pod_checks_bite(doc):
    problems = [v for where, _, spec in pod_specs(doc) for v in pod_violations(where, spec)]
    if not _expected(doc):
        assert problems == []
    else:
        assert len(problems) == 1, problems
        assert _expected(doc) in problems[0], problems


@pytest.mark.parametrize("doc", load_docs(FIXTURES / "bad_cluster.yaml"), ids=lambda d: d["metadata"]["name"])
def test_exposure_rbac_network_checks_bite(doc):
    problems = exposure_violations(doc) + rbac_violations([doc])
    if doc["kind"] == "NetworkPolicy":
        problems += network_violations([doc])
    assert any(_expected(doc) in p for p in problems), problems


def test_mutated_render_is_caught():
    """Breaking one rule in the real render (not a fixture) makes the checks fail."""
    docs = [copy.deepcopy(d) for d in render("cpu-dev")]
    job = _one(docs, "RayJob", "quantsearch-supernet")
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    worker["securityContext"]["allowPrivilegeEscalation"] = True
    del worker["resources"]["limits"]
    problems = [v for d in docs for where, _, spec in pod_specs(d) for v in pod_violations(where, spec)]
    assert len(problems) == 2, problems
    no_deny = [d for d in docs if d["metadata"]["name"] != "default-deny"]
    assert any("no default deny" in p for p in network_violations(no_deny))
    _one(docs, "Service", "mlflow")["spec"]["type"] = "NodePort"
    assert any("NodePort" in p for d in docs for p in exposure_violations(d))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_only_the_needed_flows(overlay):
    docs = render(overlay)
    policies = _by_kind(docs, "NetworkPolicy")
    labels = {}
    for d in docs:
        for _where, meta, _ in pod_specs(d):
            labels.setdefault((meta.get("labels") or {}).get("app.kubernetes.io/component"), meta.get("labels"))
    assert set(labels) == {"ray", "ray-submitter", "mlflow", "mlflow-postgres"}
    ray, sub, mlflow, pg = (labels[k] for k in ("ray", "ray-submitter", "mlflow", "mlflow-postgres"))
    assert allows(policies, ray, ray, 6379)
    assert allows(policies, ray, ray, 8265)
    assert allows(policies, ray, ray, 12345)
    assert allows(policies, sub, ray, 8265)
    assert allows(policies, ray, mlflow, 5000)
    assert allows(policies, mlflow, pg, 5432)
    for src, dst, port in [(ray, pg, 5432), (sub, mlflow, 5000), (mlflow, ray, 8265), (pg, mlflow, 5000),
                           (sub, ray, 6379), (mlflow, mlflow, 5000), (sub, pg, 5432)]:
        assert not allows(policies, src, dst, port), (src, dst, port)
    # a Kubeflow pipeline step (k8s/kubeflow/pipeline.py labels its pods so; Argo adds the workflow label)
    kfp = {"app.kubernetes.io/component": "kfp-step", "workflows.argoproj.io/workflow": "quantsearch-demo-x"}
    assert allows(policies, kfp, mlflow, 5000) is (overlay == "gpu")
    for src, dst, port in [(kfp, pg, 5432), (kfp, ray, 8265), (kfp, ray, 6379), (ray, kfp, 8080), (sub, kfp, 80),
                           (mlflow, kfp, 5000), (kfp, kfp, 8080)]:
        assert not allows(policies, src, dst, port), (src, dst, port)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_by_name_only(overlay):
    docs = render(overlay)
    refs: dict[str, set[str]] = {}
    for d in docs:
        for _, _, spec in pod_specs(d):
            for c in containers(spec):
                for e in c.get("env") or []:
                    if "secretKeyRef" in e.get("valueFrom", {}):
                        ref = e["valueFrom"]["secretKeyRef"]
                        refs.setdefault(ref["name"], set()).add(ref["key"])
                refs.update({e["secretRef"]["name"]: refs.get(e["secretRef"]["name"], set())
                             for e in c.get("envFrom") or [] if "secretRef" in e})
    assert set(refs) == SECRET_NAMES
    secrets = {d["metadata"]["name"]: d for d in _by_kind(docs, "Secret")}
    if overlay == "cpu-dev":
        # the example generator: every referenced key, placeholder values
        assert set(secrets) == SECRET_NAMES
        for name, keys in refs.items():
            assert keys <= set(secrets[name]["data"]), name
        gen = yaml.safe_load((K8S / "components" / "example-secrets" / "kustomization.yaml").read_text())
        for lit in (lit for g in gen["secretGenerator"] for lit in g["literals"]):
            key, value = lit.split("=", 1)
            if any(w in key for w in ("PASSWORD", "SECRET")):
                assert value.startswith("change-me"), lit
    else:
        assert not secrets, "production overlays must not carry credentials: create the Secrets (k8s/README.md)"
    readme = (K8S / "README.md").read_text()
    for name, keys in refs.items():
        assert f"kubectl create secret generic {name}" in readme, name
        for key in keys:
            assert key in readme, f"k8s/README.md does not document {name}'s key {key}"


def test_submitter_role_is_least_privilege():
    docs = render("cpu-dev")
    role = _one(docs, "Role", "quantsearch-submitter")
    verbs = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
             for v in rule["verbs"]}
    assert ("ray.io", "rayjobs", "create") in verbs
    assert ("", "pods/log", "get") in verbs
    assert not {v for _, r, v in verbs if r not in ("rayjobs", "pods/portforward")} - {"get", "list", "watch"}
    binding = _one(docs, "RoleBinding", "quantsearch-submitter")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "quantsearch-submitter",
                                    "namespace": "quantsearch"}]


# ---------------------------------------------------------------- Ray

def _mounts(container: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}


def _volumes(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in spec.get("volumes") or []}


def _check_ray_cluster(where: str, cluster: dict[str, Any], overlay: str, docs) -> None:
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", f"{where}: the head must schedule no work"
    pvcs = {d["metadata"]["name"] for d in _by_kind(docs, "PersistentVolumeClaim")}
    for group in [head, *cluster["workerGroupSpecs"]]:
        spec = group["template"]["spec"]
        c = spec["containers"][0]
        mounts, vols = _mounts(c), _volumes(spec)
        assert vols[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", f"{where}: /dev/shm"
        assert vols[mounts["/data"]]["persistentVolumeClaim"]["claimName"] in pvcs, f"{where}: /data on a PVC"
        assert vols[mounts["/jobs"]]["configMap"]["name"] == "quantsearch-jobs"
        env = {e["name"]: e for e in c["env"]}
        assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow:5000"
    for group in cluster["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], where
        spec = group["template"]["spec"]
        res = spec["containers"][0]["resources"]
        if overlay == "gpu":
            assert int(res["limits"]["nvidia.com/gpu"]) >= 1, where
            assert spec["nodeSelector"], where
            assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"]), where
            assert group["rayStartParams"]["num-gpus"] == res["limits"]["nvidia.com/gpu"]
        else:
            assert "nvidia.com/gpu" not in str(spec), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_cluster_shape(overlay):
    docs = render(overlay)
    rc = _one(docs, "RayCluster", "quantsearch")
    assert rc["spec"]["enableInTreeAutoscaling"] is True
    _check_ray_cluster("RayCluster", rc["spec"], overlay, docs)
    for job in _by_kind(docs, "RayJob"):
        _check_ray_cluster(f"RayJob/{job['metadata']['name']}", job["spec"]["rayClusterSpec"], overlay, docs)
    images = {c["image"] for d in docs for _, _, s in pod_specs(d) for c in containers(s)}
    tag = "0.1.0-cuda12.8" if overlay == "gpu" else "0.1.0-cpu"
    assert f"ghcr.io/quantsearch/quantsearch:{tag}" in images


def _spec_overrides(sets: list[str]) -> dict[str, str]:
    return dict(s.split("=", 1) for s in sets)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayjobs_run_existing_specs_and_resume(overlay):
    from quantsearch.config import load_job

    docs = render(overlay)
    jobs_cm = _one(docs, "ConfigMap", "quantsearch-jobs")["data"]
    run_names = set()
    for job in _by_kind(docs, "RayJob"):
        spec = job["spec"]
        assert spec["suspend"] is True, "RayJobs are templates: applying an overlay must start nothing"
        assert spec["shutdownAfterJobFinishes"] is True
        assert spec["ttlSecondsAfterFinished"] > 0
        assert spec["activeDeadlineSeconds"] > 0
        assert spec["backoffLimit"] >= 1, "a failed RayJob must be retried (and resume)"
        path, sets = entrypoint_spec_and_sets(entrypoint_argv(job))
        assert path.startswith("/jobs/"), path
        local = ROOT / "jobs" / path.removeprefix("/jobs/")
        assert local.exists(), f"{path} is not in jobs/"
        assert jobs_cm[local.name] == local.read_text(), f"{local.name}: the ConfigMap differs from jobs/"
        over = _spec_overrides(sets)
        assert over["output_dir"].startswith("/data/")
        assert over["scaling.storage_path"].startswith("/data/")
        assert over.get("scaling.run_name"), "a fixed run name makes a restarted RayJob resume"
        run_names.add(over["scaling.run_name"])
        loaded = load_job(local, sets)
        assert loaded.output_dir == Path(over["output_dir"]) or str(loaded.output_dir) == over["output_dir"]
        assert loaded.scaling.run_name == over["scaling.run_name"]
        assert loaded.scaling.storage_path == over["scaling.storage_path"]
        # the job's cluster (no autoscaler) holds what its Train workers ask for: a GPU, or a CPU, each
        workers = loaded.scaling.workers
        groups = spec["rayClusterSpec"]["workerGroupSpecs"]
        if loaded.scaling.use_gpu:
            # a cuda driver (entrypointNumGpus) holds a GPU of a worker too: the head has none
            workers += spec.get("entrypointNumGpus", 0)
            have = sum(g["replicas"] * int(g["rayStartParams"].get("num-gpus", 0)) for g in groups)
        else:
            have = sum(g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
                       for g in groups)
        assert have >= workers, f"RayJob/{job['metadata']['name']}: {workers} Train workers, room for {have}"
        if overlay == "gpu":
            assert over["device"] == "cuda"
            assert over["scaling.use_gpu"] == "true"
            assert spec["entrypointNumGpus"] >= 1, "a cuda driver on the GPU-less head fails: entrypointNumGpus"
    assert len(run_names) == len(_by_kind(docs, "RayJob")), "each RayJob needs its own run name"


def test_gpu_overlay_runs_the_gpu_cluster_job():
    """The gpu overlay's RayJob quantsearch-gpu-cluster runs jobs/gpu-cluster.yaml, a spec the ConfigMap carries,
    on CUDA with GPU Ray Train workers, CIFAR-10 read from the shared volume."""
    docs = render("gpu")
    job = _one(docs, "RayJob", "quantsearch-gpu-cluster")
    path, sets = entrypoint_spec_and_sets(entrypoint_argv(job))
    assert path == "/jobs/gpu-cluster.yaml"
    over = _spec_overrides(sets)
    assert over["device"] == "cuda"
    assert over["scaling.use_gpu"] == "true"
    assert over["data.root"].startswith("/data/"), "the pods have no internet: CIFAR-10 comes from the volume"
    listed = yaml.safe_load((ROOT / "jobs" / "Kustomization").read_text())["configMapGenerator"][0]["files"]
    assert "gpu-cluster.yaml" in listed, "jobs/Kustomization must list gpu-cluster.yaml (the ConfigMap at /jobs)"
    assert (ROOT / "jobs" / "gpu-cluster.yaml").is_file()
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert all(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
               for g in groups)
    assert all("gpu-cluster" not in j["spec"]["entrypoint"] for j in _by_kind(render("cpu-dev"), "RayJob"))


def test_submit_to_the_gpu_cluster_puts_the_cuda_driver_on_a_gpu_worker(monkeypatch, capsys):
    """`quantsearch submit jobs/gpu-cluster.yaml` through the head Service: the head has no GPU (num-cpus 0, no
    nvidia.com/gpu), so the submission asks Ray for one GPU for the driver, which the GPU worker group offers."""
    import ray.job_submission
    from quantsearch.cli import main

    rc = _one(render("gpu"), "RayCluster", "quantsearch")
    head = rc["spec"]["headGroupSpec"]
    assert "nvidia.com/gpu" not in str(head["template"]["spec"]["containers"][0]["resources"])
    assert int(rc["spec"]["workerGroupSpecs"][0]["rayStartParams"]["num-gpus"]) >= 1
    sent: list[dict[str, Any]] = []

    class Client:
        def __init__(self, address):
            assert address == "http://127.0.0.1:8265"

        def submit_job(self, **kw):
            sent.append(kw)
            return "raysubmit_gpu"

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", Client)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    common = ["--address", "http://127.0.0.1:8265", "--set", "output_dir=/data/runs/gpu-cluster-mine",
              "--set", "scaling.storage_path=/data/ray", "--tracking-uri", "http://mlflow:5000"]
    assert main(["submit", str(ROOT / "jobs" / "gpu-cluster.yaml"), *common]) == 0
    assert main(["submit", str(ROOT / "jobs" / "demo.yaml"), *common, "--set", "device=cpu"]) == 0
    assert [kw.get("entrypoint_num_gpus") for kw in sent] == [1, None]
    assert "raysubmit_gpu" in capsys.readouterr().out


def test_entrypoint_command_exists_in_the_image():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    from quantsearch.cli import build_parser

    for overlay in OVERLAYS:
        for job in _by_kind(render(overlay), "RayJob"):
            argv = entrypoint_argv(job)
            assert argv[0] in scripts
            args = build_parser().parse_args(argv[1:])  # exits (SystemExit) on an unknown option
            assert args.command == "run"
    docker = (K8S / "Dockerfile").read_text()
    assert re.search(r"^COPY jobs/\S* /jobs/$", docker, re.M), "the image must hold jobs/ at /jobs"
    assert re.search(r"^RUN pip install .* \.(\s|$)", docker, re.M), "the image must install the package"
    listed = yaml.safe_load((ROOT / "jobs" / "Kustomization").read_text())["configMapGenerator"][0]["files"]
    assert sorted(listed) == sorted(p.name for p in (ROOT / "jobs").glob("*.yaml"))


# ---------------------------------------------------------------- MLflow

@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing mlflow.cli: SQLAlchemy's noload
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_server(overlay):
    docs = render(overlay)
    dep = _one(docs, "Deployment", "mlflow")
    svc = _one(docs, "Service", "mlflow")
    c = next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "mlflow")
    args = c["args"]
    assert "--serve-artifacts" in args
    assert "--app-name=basic-auth" in args
    assert any(a.startswith("--backend-store-uri=postgresql://") for a in args)
    from mlflow.cli import server

    assert c["command"] == ["mlflow"]
    assert args[0] == "server"
    known = {opt for p in server.params for opt in p.opts}
    unknown = [a for a in args[1:] if a.split("=", 1)[0] not in known]
    assert not unknown, f"mlflow server (the pinned version) has no option {unknown}"
    hosts = next(a.split("=", 1)[1] for a in args if a.startswith("--allowed-hosts=")).split(",")
    ns, port = svc["metadata"]["namespace"], svc["spec"]["ports"][0]["port"]
    for name in (svc["metadata"]["name"], f"mlflow.{ns}", f"mlflow.{ns}.svc", f"mlflow.{ns}.svc.cluster.local"):
        assert name in hosts, name
        assert f"{name}:{port}" in hosts, name
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    pg = _one(docs, "StatefulSet", "mlflow-postgres")
    assert pg["spec"]["volumeClaimTemplates"]
    pgc = pg["spec"]["template"]["spec"]["containers"][0]
    assert pgc["readinessProbe"]
    assert pgc["livenessProbe"]
    vols = _volumes(dep["spec"]["template"]["spec"])
    assert vols[_mounts(c)["/mlflow"]]["persistentVolumeClaim"]["claimName"] == "mlflow-artifacts"


# ---------------------------------------------------------------- Dockerfile

def _pins(requirements: list[str]) -> dict[str, tuple[str, str]]:
    """name -> (extras, version) for every `name[extras]==version`."""
    out = {}
    for req in requirements:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[([^\]]*)\])?==([^\s;]+)", req.strip())
        if m:
            out[m.group(1).lower()] = (m.group(2) or "", m.group(3))
    return out


def test_dockerfile_matches_pyproject_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = _pins(deps)
    assert {"torch", "torchvision", "ray", "mlflow"} <= set(wanted)
    docker = (K8S / "Dockerfile").read_text()
    installed = _pins(re.findall(r'"([^"\s]+==[^"\s]+)"', docker))
    for name, (extras, version) in wanted.items():
        assert name in installed, f"the Dockerfile does not install {name}=={version}"
        assert installed[name][1] == version, f"{name}: Dockerfile {installed[name][1]} != pyproject {version}"
        assert set(extras.split(",")) - {""} <= set(installed[name][0].split(",")), f"{name}: extras {extras}"
    assert {"default", "train", "tune"} <= set(installed["ray"][0].split(","))
    assert set(installed) - set(wanted) == set(), "the Dockerfile pins a package pyproject does not"
    bases = re.findall(r"(?:BASE_IMAGE=)(\S+)", docker)
    assert bases
    assert all(":" in b and not b.endswith(":latest") for b in bases), bases
    assert any("cuda" in b for b in bases), "the gpu overlay's CUDA base must be documented"
    assert re.search(r"^USER 1000", docker, re.M), "the image must run as non-root"


def test_readme_names_match_the_render():
    """k8s/README.md's commands name what the overlays make (KubeRay names the head Service <cluster>-head-svc)."""
    readme = (K8S / "README.md").read_text()
    for overlay in OVERLAYS:
        docs = render(overlay)
        assert f"kubectl apply -k k8s/overlays/{overlay}" in readme
        rc = _one(docs, "RayCluster", "quantsearch")
        assert f"port-forward svc/{rc['metadata']['name']}-head-svc 8265:8265" in readme
        for job in _by_kind(docs, "RayJob"):
            assert f"patch rayjob {job['metadata']['name']} " in readme
        svc = _one(docs, "Service", "mlflow")
        port = svc["spec"]["ports"][0]["port"]
        assert f"port-forward svc/mlflow {port}:{port}" in readme
    gpu_group = _one(render("gpu"), "RayCluster", "quantsearch")["spec"]["workerGroupSpecs"][0]["groupName"]
    assert f"`{gpu_group}`" in readme


def test_k8s_tools_are_in_the_k8s_extra():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extra = set(cfg["project"]["optional-dependencies"]["k8s"])
    assert {"kubernetes-validate", "jsonschema", "pyyaml", "yamllint"} <= extra
    assert "k8s" in {m.split(":")[0] for m in cfg["tool"]["pytest"]["ini_options"]["markers"]}
