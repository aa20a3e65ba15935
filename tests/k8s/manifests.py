"""Helpers of the k8s tests: render overlays, load the KubeRay CRD schemas, walk pod specs, check policies."""

from __future__ import annotations

import copy
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
# KubeRay v1.7.0's CRDs, copied from ../shared/k8s-crds/ (the project's shared data) so that a clone anywhere
# validates offline; test_crds_are_the_shared_ones keeps the copy equal to the shared files where they exist
CRD_DIR = Path(__file__).resolve().parent / "crds"
SHARED_CRD_DIR = ROOT.parent / "shared" / "k8s-crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
KUBERNETES_VERSION = "1.37.0"  # the newest kubernetes-validate ships schemas for
BUILTIN_SERVICE_TYPES = {"ClusterIP"}
CREDENTIAL_WORDS = ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY")


def kubectl() -> str | None:
    return shutil.which("kubectl")


# every test module here: marked k8s, and skipped where kubectl (with kustomize) is missing
K8S_MARKS = [pytest.mark.k8s, pytest.mark.skipif(kubectl() is None, reason="kubectl (with kustomize) is not installed")]


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize k8s/overlays/<overlay>` as a tuple of documents (fails on a kustomize error)."""
    r = subprocess.run([kubectl() or "kubectl", "kustomize", str(K8S / "overlays" / overlay)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"kubectl kustomize k8s/overlays/{overlay} failed:\n{r.stderr}"
    return tuple(d for d in yaml.safe_load_all(r.stdout) if d)


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# ---------------------------------------------------------------- KubeRay CRD schemas (jsonschema)

def _drop_defaulted_required(schema: Any) -> None:
    if isinstance(schema, dict):
        props = schema.get("properties")
        if isinstance(props, dict) and isinstance(schema.get("required"), list):
            schema["required"] = [r for r in schema["required"] if "default" not in props.get(r, {})]
            if not schema["required"]:
                del schema["required"]
        for v in schema.values():
            _drop_defaulted_required(v)
    elif isinstance(schema, list):
        for v in schema:
            _drop_defaulted_required(v)


def _close_objects(schema: Any) -> None:
    """Strict mode: an object that lists its properties accepts no others (catches misspelled fields)."""
    if isinstance(schema, dict):
        if (isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        for v in schema.values():
            _close_objects(v)
    elif isinstance(schema, list):
        for v in schema:
            _close_objects(v)


@cache
def crd_schema(kind: str, strict: bool = True) -> dict[str, Any]:
    path = CRD_DIR / CRD_FILES[kind]
    if not path.exists():
        raise AssertionError(f"KubeRay CRD {path} is missing: the k8s tests validate RayCluster/RayJob against "
                             "../shared/k8s-crds/ (see its README); restore that folder")
    crd = yaml.safe_load(path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    _drop_defaulted_required(schema)
    if strict:
        _close_objects(schema)
    return schema


def drop_nulls(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: drop_nulls(v) for k, v in doc.items() if v is not None}
    if isinstance(doc, list):
        return [drop_nulls(v) for v in doc if v is not None]
    return doc


def crd_errors(doc: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(crd_schema(doc["kind"]))
    return [f"{doc['kind']}/{doc['metadata']['name']} {'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(drop_nulls(doc))]


# ---------------------------------------------------------------- pod specs

def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, pod metadata, pod spec) for every pod a manifest makes, custom resources included."""
    kind, name, spec = doc.get("kind"), doc.get("metadata", {}).get("name"), doc.get("spec") or {}
    where = f"{kind}/{name}"
    if kind == "Pod":
        yield where, doc.get("metadata", {}), spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        t = spec.get("template", {})
        yield where, t.get("metadata", {}), t.get("spec", {})
    elif kind == "CronJob":
        t = spec.get("jobTemplate", {}).get("spec", {}).get("template", {})
        yield where, t.get("metadata", {}), t.get("spec", {})
    elif kind == "RayCluster":
        yield from _ray_cluster_pods(where, spec)
    elif kind == "RayJob":
        yield from _ray_cluster_pods(where, spec.get("rayClusterSpec") or {})
        if spec.get("submitterPodTemplate"):
            t = spec["submitterPodTemplate"]
            yield f"{where} submitter", t.get("metadata", {}), t.get("spec", {})


def _ray_cluster_pods(where: str, spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    head = spec.get("headGroupSpec", {}).get("template", {})
    head_spec = copy.deepcopy(head.get("spec", {}))
    if spec.get("enableInTreeAutoscaling"):
        # the autoscaler sidecar KubeRay adds to the head pod, as autoscalerOptions describe it
        opts = spec.get("autoscalerOptions") or {}
        head_spec.setdefault("containers", []).append(
            {"name": "autoscaler", "image": opts.get("image", head_spec["containers"][0].get("image")),
             "securityContext": opts.get("securityContext"), "resources": opts.get("resources")})
    yield f"{where} head", head.get("metadata", {}), head_spec
    for group in spec.get("workerGroupSpecs", []):
        t = group.get("template", {})
        yield f"{where} worker group {group.get('groupName')}", t.get("metadata", {}), t.get("spec", {})


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod.get("initContainers") or []) + list(pod.get("containers") or [])


def image_pinned(image: str | None) -> bool:
    if not image:
        return False
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    return ":" in last and last.rsplit(":", 1)[1] not in ("", "latest")


def pod_violations(where: str, pod: dict[str, Any]) -> list[str]:
    """The security rules every pod must meet."""
    out = []
    psc = pod.get("securityContext") or {}
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        out.append(f"{where}: uses the host's network/PID/IPC namespace")
    for c in containers(pod):
        at = f"{where} container {c.get('name')}"
        sc = c.get("securityContext") or {}
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        user = sc.get("runAsUser", psc.get("runAsUser"))
        if non_root is not True or user == 0:
            out.append(f"{at}: not runAsNonRoot")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{at}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            out.append(f"{at}: privileged")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            out.append(f"{at}: capabilities not dropped (drop: [ALL])")
        if (sc.get("capabilities") or {}).get("add"):
            out.append(f"{at}: adds capabilities")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{at}: no seccompProfile RuntimeDefault (restricted Pod Security Standard)")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{at}: root filesystem is not read-only")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(res.get(part) or {})
            if missing:
                out.append(f"{at}: no {part} for {', '.join(sorted(missing))}")
        if not image_pinned(c.get("image")):
            out.append(f"{at}: image {c.get('image')!r} is not pinned (a tag other than latest, or a digest)")
        for env in c.get("env") or []:
            if any(w in env["name"].upper() for w in CREDENTIAL_WORDS) and "value" in env:
                out.append(f"{at}: credential {env['name']} given as a literal value, not from a Secret")
    return out


def exposure_violations(doc: dict[str, Any]) -> list[str]:
    """Nothing is exposed outside the cluster: ClusterIP Services only, no Ingress, Ray head ClusterIP."""
    kind, name, spec = doc.get("kind"), doc.get("metadata", {}).get("name"), doc.get("spec") or {}
    out = []
    if kind == "Service" and spec.get("type", "ClusterIP") not in BUILTIN_SERVICE_TYPES:
        out.append(f"Service/{name}: type {spec.get('type')} exposes it (ClusterIP only)")
    if kind == "Ingress" or (kind == "Route"):
        out.append(f"{kind}/{name}: public exposure")
    cluster = spec if kind == "RayCluster" else (spec.get("rayClusterSpec") or {}) if kind == "RayJob" else None
    if cluster:
        head = cluster.get("headGroupSpec", {})
        if head.get("serviceType", "ClusterIP") != "ClusterIP":
            out.append(f"{kind}/{name}: Ray head service type {head.get('serviceType')} (ClusterIP only)")
        if head.get("enableIngress"):
            out.append(f"{kind}/{name}: Ray dashboard Ingress enabled")
    return out


def rbac_violations(docs: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> list[str]:
    out = []
    for d in docs:
        name = d.get("metadata", {}).get("name")
        if d.get("kind") in ("ClusterRole", "ClusterRoleBinding"):
            out.append(f"{d['kind']}/{name}: cluster-wide rights (a namespaced Role only)")
        if d.get("kind") == "Role":
            for rule in d.get("rules", []):
                if "*" in rule.get("verbs", []) or "*" in rule.get("resources", []) or "*" in rule.get("apiGroups", []):
                    out.append(f"Role/{name}: wildcard in {rule}")
                if {"secrets", "roles", "rolebindings"} & set(rule.get("resources", [])):
                    out.append(f"Role/{name}: may touch {rule['resources']}")
                if {"escalate", "bind", "impersonate"} & set(rule.get("verbs", [])):
                    out.append(f"Role/{name}: verbs {rule['verbs']}")
    return out


def _expression_matches(expr: dict[str, Any], labels: dict[str, str]) -> bool:
    key, op, values = expr["key"], expr["operator"], expr.get("values") or []
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    raise AssertionError(f"unknown label selector operator {op!r}")


def _labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return (all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())
            and all(_expression_matches(e, labels) for e in selector.get("matchExpressions") or []))


def _peers_allow(rule_peers: list[dict[str, Any]] | None, labels: dict[str, str]) -> bool:
    if rule_peers is None:  # no from/to: everyone
        return True
    return any("podSelector" in p and "namespaceSelector" not in p and _labels_match(p["podSelector"], labels)
               for p in rule_peers)


def _ports_allow(ports: list[dict[str, Any]] | None, port: int) -> bool:
    return ports is None or any(p.get("port") == port for p in ports)


def allows(policies: list[dict[str, Any]], src: dict[str, str], dst: dict[str, str], port: int) -> bool:
    """Whether the NetworkPolicies let a pod labelled src open TCP port on a pod labelled dst (same namespace)."""
    egress_ok = ingress_ok = False
    for p in policies:
        spec = p["spec"]
        if _labels_match(spec.get("podSelector") or {}, src):
            egress_ok |= any(_peers_allow(r.get("to"), dst) and _ports_allow(r.get("ports"), port)
                             for r in spec.get("egress") or [])
        if _labels_match(spec.get("podSelector") or {}, dst):
            ingress_ok |= any(_peers_allow(r.get("from"), src) and _ports_allow(r.get("ports"), port)
                              for r in spec.get("ingress") or [])
    return egress_ok and ingress_ok


def network_violations(docs: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> list[str]:
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    out = []
    deny = [p for p in policies if p["spec"].get("podSelector") in ({}, None)
            and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    if not deny:
        out.append("NetworkPolicy: no default deny (podSelector {}, policyTypes Ingress and Egress, no rules)")
    for p in policies:
        for rule in p["spec"].get("ingress") or []:
            peers = rule.get("from")
            if peers is None or any("ipBlock" in q or ("namespaceSelector" in q and "podSelector" not in q)
                                    for q in peers):
                out.append(f"NetworkPolicy/{p['metadata']['name']}: ingress open beyond the namespace's pods: {rule}")
    return out


# ---------------------------------------------------------------- RayJob entrypoints

def entrypoint_argv(rayjob: dict[str, Any]) -> list[str]:
    return shlex.split(rayjob["spec"]["entrypoint"])


def entrypoint_spec_and_sets(argv: list[str]) -> tuple[str, list[str]]:
    assert argv[:2] == ["quantsearch", "run"], f"entrypoint {argv} is not `quantsearch run ...`"
    spec, rest, sets = argv[2], argv[3:], []
    while rest:
        flag = rest.pop(0)
        assert flag == "--set", f"unexpected {flag!r} in entrypoint {argv}"
        assert rest, f"--set without a value in entrypoint {argv}"
        sets.append(rest.pop(0))
    return spec, sets


# ---------------------------------------------------------------- compiled Kubeflow pipeline (kfp v2 IR YAML)

def pipeline_steps(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The compiled pipeline's tasks in run order (each after the one before), with their container and their
    Kubernetes settings: [{"task", "display", "container", "k8s", "caching"}]."""
    ir = next(d for d in docs if "root" in d)
    platform = next((d for d in docs if "platforms" in d), {"platforms": {"kubernetes": {"deploymentSpec": {}}}})
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"].get("executors", {})
    tasks = ir["root"]["dag"]["tasks"]
    order: list[str] = []
    remaining = dict(tasks)
    while remaining:
        ready = [n for n, t in remaining.items() if set(t.get("dependentTasks") or []) <= set(order)]
        assert len(ready) == 1, f"the steps are not a chain: ready at once {ready}"
        order.append(ready[0])
        del remaining[ready[0]]
    out = []
    for name in order:
        task = tasks[name]
        executor = ir["components"][task["componentRef"]["name"]]["executorLabel"]
        out.append({"task": name, "display": task["taskInfo"]["name"], "deps": task.get("dependentTasks") or [],
                    "container": ir["deploymentSpec"]["executors"][executor]["container"],
                    "k8s": k8s.get(executor, {}), "caching": task.get("cachingOptions", {})})
    return out


def step_argv(step: dict[str, Any]) -> list[str]:
    return [*step["container"]["command"], *step["container"]["args"]]


def pipeline_violations(docs: list[dict[str, Any]], gpu_stages: tuple[str, ...]) -> list[str]:
    """What the compiled pipeline's steps must meet: a pinned image, `quantsearch run /jobs/... --only <stage>`,
    CPU/memory requests and limits, GPUs (on GPU nodes) exactly on the training steps, the shared PVC at /data and
    the job specs at /jobs, non-root, caching off (results are files on the PVC, not kfp outputs)."""
    out = []
    for step in pipeline_steps(docs):
        at, c, k = f"step {step['display']}", step["container"], step["k8s"]
        if not image_pinned(c.get("image")):
            out.append(f"{at}: image {c.get('image')!r} is not pinned (a tag other than latest, or a digest)")
        argv = step_argv(step)
        if argv[:2] != ["quantsearch", "run"] or not argv[2].startswith("/jobs/") or argv[3:5] != ["--only",
                                                                                                   step["display"]]:
            out.append(f"{at}: command {argv[:5]} is not `quantsearch run /jobs/<spec> --only {step['display']}`")
        res = c.get("resources") or {}
        for part in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"):
            if not res.get(part):
                out.append(f"{at}: no {part}")
        acc = res.get("accelerator") or {}
        has_gpu = acc.get("resourceType") == "nvidia.com/gpu" and int(acc.get("resourceCount", 0)) >= 1
        if step["display"] in gpu_stages and not has_gpu:
            out.append(f"{at}: a training step without an nvidia.com/gpu request")
        if step["display"] not in gpu_stages and acc:
            out.append(f"{at}: a CPU step requests an accelerator {acc}")
        if has_gpu:
            if not (k.get("nodeSelector") or {}).get("labels"):
                out.append(f"{at}: GPU step without a nodeSelector for GPU nodes")
            if not any(t.get("key") == "nvidia.com/gpu" for t in k.get("tolerations") or []):
                out.append(f"{at}: GPU step does not tolerate the nvidia.com/gpu taint")
        if {m["mountPath"] for m in k.get("pvcMount") or []} != {"/data"}:
            out.append(f"{at}: the shared PVC is not mounted at /data")
        if {m["mountPath"] for m in k.get("configMapAsVolume") or []} != {"/jobs"}:
            out.append(f"{at}: the job specs (ConfigMap) are not mounted at /jobs")
        sc = k.get("securityContext") or {}
        if sc.get("runAsNonRoot") is not True or str(sc.get("runAsUser", "0")) == "0":
            out.append(f"{at}: not runAsNonRoot")
        if step["caching"].get("enableCache", False):
            out.append(f"{at}: caching on (a cached step would skip the stage's work)")
    return out
