"""Kubeflow Pipelines (kfp v2): a job spec's stages as one step each, every step `quantsearch run /jobs/<spec>
--only <stage>` in the quantsearch image, all of them on the shared PVC (/data) so that a step reads what the step
before it wrote (the run folder, Ray checkpoints). The training steps (fp32, qat, dqss, supernet) and the ones that
measure subnets on data (sample, search) request NVIDIA GPUs on GPU nodes; predictor and export run on CPU.

Imports only kfp (with kfp-kubernetes) and the standard library, so that it compiles in an environment without
torch (`.venv-kfp`, `make kfp`). Compile it with `quantsearch k8s pipeline --out pipeline.yaml --job jobs/X.yaml`,
which reads the spec and passes its stages and GPU count here; or directly:

    python k8s/kubeflow/pipeline.py --out pipeline.yaml --job demo.yaml --stages fp32,qat,dqss,supernet
"""

# no `from __future__ import annotations`: kfp reads the step and pipeline functions' annotations as types

import argparse
import os
import shlex
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# quantsearch.pipeline.STAGES, in its order (tests/k8s keeps the two equal; this file cannot import quantsearch)
STAGES = ("fp32", "qat", "dqss", "supernet", "sample", "predictor", "search", "export")
# training, and measuring subnets on real data (sample's BN recalibration and val passes, search's finalists)
GPU_STAGES = ("fp32", "qat", "dqss", "supernet", "sample", "search")
# the gpu overlay's image (tests/k8s checks the two agree): a pinned tag, never latest
IMAGE = "ghcr.io/quantsearch/quantsearch:0.1.0-cuda12.8"
DATA_PVC = "quantsearch-data"
JOBS_CONFIGMAP = "quantsearch-jobs"
MLFLOW_SECRET = "mlflow-auth"
TRACKING_URI = "http://mlflow:5000"
# the pods' label: the gpu overlay's NetworkPolicies (k8s/components/kubeflow) let pods with it reach MLflow
STEP_LABEL = ("app.kubernetes.io/component", "kfp-step")
# the GPU nodes, as the gpu overlay's Ray workers find them (NVIDIA device plugin / GPU Operator)
GPU_NODE_SELECTOR = ("nvidia.com/gpu.present", "true")
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# requests = limits (cpu, memory) per stage: the gpu overlay's worker size for training, less for the rest
RESOURCES = {
    "fp32": ("8", "48Gi"), "qat": ("8", "48Gi"), "dqss": ("8", "48Gi"), "supernet": ("8", "48Gi"),
    "sample": ("8", "48Gi"), "predictor": ("2", "8Gi"), "search": ("8", "48Gi"), "export": ("4", "16Gi"),
}
STEP_TIMEOUT_S = 6 * 3600  # as the RayJobs' activeDeadlineSeconds
RETRIES = 2  # as the RayJobs' backoffLimit: a retried step resumes from what is on /data


@dataclass(frozen=True)
class PipelineConfig:
    """What a compiled pipeline runs: the spec under /jobs, its stages, the run's name and where it writes."""

    job: str
    stages: tuple[str, ...] = STAGES
    run_name: str = "kfp-quantsearch"
    supernet_gpus: int = 1
    image: str = IMAGE
    data_pvc: str = DATA_PVC
    tracking_uri: str = TRACKING_URI
    sets: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise ValueError(f"stages {list(self.stages)}: each must be one of {', '.join(STAGES)}")
        if list(self.stages) != [s for s in STAGES if s in self.stages]:
            raise ValueError(f"stages {list(self.stages)} are not in pipeline order ({', '.join(STAGES)})")
        if self.supernet_gpus < 1:
            raise ValueError(f"supernet_gpus {self.supernet_gpus} must be at least 1")
        if not self.job.startswith("/jobs/"):
            raise ValueError(f"job {self.job} must be a path under /jobs (the quantsearch-jobs ConfigMap)")


def gpus(config: PipelineConfig, stage: str) -> int:
    """NVIDIA GPUs a stage's pod requests: one per Ray Train worker for the supernet, else one (GPU stages)."""
    if stage not in GPU_STAGES:
        return 0
    return config.supernet_gpus if stage == "supernet" else 1


def step_argv(config: PipelineConfig, stage: str) -> list[str]:
    """The step's command: one stage of the spec, on the shared volume, on cuda when the step has a GPU."""
    on_gpu = gpus(config, stage) > 0
    sets = [f"output_dir=/data/runs/{config.run_name}", "scaling.storage_path=/data/ray",
            f"scaling.run_name={config.run_name}", f"device={'cuda' if on_gpu else 'cpu'}",
            f"scaling.use_gpu={'true' if on_gpu else 'false'}", *config.sets]
    return ["quantsearch", "run", config.job, "--only", stage, *(a for s in sets for a in ("--set", s))]


def _stage_component(config: PipelineConfig, stage: str) -> Callable[..., object]:
    from kfp import dsl

    argv = step_argv(config, stage)

    def step() -> dsl.ContainerSpec:
        return dsl.ContainerSpec(image=config.image, command=argv[:1], args=argv[1:])

    step.__name__ = f"stage_{stage}"  # the component's name: comp-stage-<stage>
    step.__doc__ = f"quantsearch stage {stage}: {shlex.join(argv)}"
    return dsl.container_component(step)


def build(config: PipelineConfig) -> Callable[..., object]:
    """The kfp pipeline function: one task per stage, each after the one before."""
    from kfp import dsl, kubernetes

    @dsl.pipeline(name=f"quantsearch-{config.run_name}",
                  description=f"quantsearch run {config.job}: {' -> '.join(config.stages)}, one step per stage, "
                              f"run folder /data/runs/{config.run_name} on PVC {config.data_pvc}")
    def quantsearch_pipeline() -> None:
        previous = None
        for stage in config.stages:
            task = _stage_component(config, stage)()
            task.set_display_name(stage)
            # the steps' results are files on the PVC, not kfp outputs: a cached step would skip real work
            task.set_caching_options(False)
            task.set_retry(RETRIES)
            cpu, memory = RESOURCES[stage]
            task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
            n = gpus(config, stage)
            if n:
                task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(n)
                kubernetes.add_node_selector(task, *GPU_NODE_SELECTOR)
                kubernetes.add_toleration(task, **GPU_TOLERATION)
            kubernetes.mount_pvc(task, pvc_name=config.data_pvc, mount_path="/data")
            kubernetes.use_config_map_as_volume(task, config_map_name=JOBS_CONFIGMAP, mount_path="/jobs")
            kubernetes.empty_dir_mount(task, volume_name="tmp", mount_path="/tmp", size_limit="10Gi")
            kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                       size_limit="8Gi")  # Ray's object store (the supernet's Train workers)
            kubernetes.set_security_context(task, run_as_user=1000, run_as_group=1000, run_as_non_root=True)
            kubernetes.add_pod_label(task, *STEP_LABEL)
            kubernetes.set_timeout(task, STEP_TIMEOUT_S)
            kubernetes.use_secret_as_env(task, MLFLOW_SECRET, {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                                                                "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"})
            task.set_env_variable("MLFLOW_TRACKING_URI", config.tracking_uri)
            task.set_env_variable("HOME", "/tmp")
            task.set_env_variable("RAY_AUTH_MODE", "disabled")
            if previous is not None:
                task.after(previous)
            previous = task

    return quantsearch_pipeline


def compile_to(config: PipelineConfig, out: str | os.PathLike[str]) -> Path:
    """Compile the pipeline to YAML at `out`, written whole or not at all."""
    from kfp import compiler

    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".yaml", dir=out.parent)
    os.close(fd)
    try:
        compiler.Compiler().compile(build(config), tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: compile for a spec under /jobs (what `quantsearch k8s pipeline` runs)."""
    p = argparse.ArgumentParser(description="Compile the quantsearch Kubeflow pipeline (kfp v2) to YAML.")
    p.add_argument("--out", required=True, help="the compiled pipeline (YAML)")
    p.add_argument("--job", required=True, help="the spec as the pods see it: /jobs/<name>.yaml or <name>.yaml")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated, in pipeline order")
    p.add_argument("--run-name", default=None,
                   help="run folder /data/runs/<name> and Ray run name (default: kfp-<spec file's stem>)")
    p.add_argument("--supernet-gpus", type=int, default=1, help="GPUs of the supernet step (its Ray Train workers)")
    p.add_argument("--image", default=IMAGE)
    p.add_argument("--data-pvc", default=DATA_PVC)
    p.add_argument("--tracking-uri", default=TRACKING_URI)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an extra override of every step")
    a = p.parse_args(argv)
    job = a.job if a.job.startswith("/jobs/") else f"/jobs/{Path(a.job).name}"
    run_name = a.run_name or f"kfp-{Path(job).stem.replace('_', '-')}"
    config = PipelineConfig(job=job, stages=tuple(s for s in a.stages.split(",") if s), run_name=run_name,
                            supernet_gpus=a.supernet_gpus, image=a.image, data_pvc=a.data_pvc,
                            tracking_uri=a.tracking_uri, sets=tuple(a.set))
    print(compile_to(config, a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
