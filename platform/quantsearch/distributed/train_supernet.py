"""Supernet training on Ray Train (V2): TorchTrainer, per-epoch checkpoints, restart from get_checkpoint().

Every worker loads the data and shards it by index (a seeded permutation, rank::world); gradients of the
sandwich step are all-reduced by hand once per step (every rank samples the same subnets, so the same
parameters carry gradients everywhere). Rank 0 writes the checkpoint and logs to MLflow.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantsearch.allocator import tune_host_allocator
from quantsearch.config import JobSpec, SupernetSpec
from quantsearch.errors import QuantsearchError

FAULT_ENV = "QUANTSEARCH_FAULT_INJECT"  # "rank:epoch:marker" kills that worker once, after that epoch
WORKERS_FILE = "workers.json"  # beside supernet.pt (checkpoint and output folder): where each rank ran


@dataclass(frozen=True)
class RayTrainResult:
    """Where the final checkpoint is and the last metrics reported."""

    checkpoint: Path
    metrics: dict[str, Any]
    storage: Path
    workers: tuple[dict[str, Any], ...] = ()  # per rank: node_id, hostname, pid (the last attempt's group)


def _allreduce_grads(model: Any) -> None:
    import torch
    import torch.distributed as dist

    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def _gather_workers(rank: int) -> list[dict[str, Any]]:
    """Every rank's {rank, node_id, hostname, pid}, gathered over the process group (one entry without one)."""
    import ray
    import torch.distributed as dist

    me = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
          "pid": os.getpid()}
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [me]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, me)
    return sorted(everyone, key=lambda w: w["rank"])


def _maybe_inject_fault(spec: str | None, rank: int, epoch: int) -> None:
    """Test hook: SIGKILL this worker once after `epoch` when FAULT_ENV names its rank."""
    if not spec:
        return
    f_rank, f_epoch, marker = spec.split(":", 2)
    if rank == int(f_rank) and epoch == int(f_epoch) and not os.path.exists(marker):
        import time

        Path(marker).write_text(f"killed rank {rank} after epoch {epoch}\n")
        # die a few health-check intervals (2 s) after the report, as a crash in the next epoch would:
        # the controller has registered rank 0's checkpoint by then
        time.sleep(6.0)
        os.kill(os.getpid(), signal.SIGKILL)


def ray_failure(exc: BaseException, where: Path) -> QuantsearchError:
    """One line for a failed Ray Train run: a worker's own user error as it is (a NaN loss, bad data), else the first
    failing rank's error type and first line (Ray's message spreads it over a traceback) and the run folder."""
    failures = getattr(exc, "worker_failures", None) or {}
    for rank, err in sorted(failures.items()):
        cause = getattr(err, "cause", None) or err  # a RayTaskError carries the worker's exception as .cause
        if isinstance(cause, QuantsearchError):
            return cause
        lines = [ln for ln in str(cause).splitlines() if ln.strip()]
        return QuantsearchError(f"supernet training on Ray failed on rank {rank}: {type(cause).__name__}: "
                                f"{lines[0] if lines else ''}; its traceback is in Ray's logs "
                                f"(<Ray temp dir>/session_latest/logs/train), the run in {where}")
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return QuantsearchError(f"supernet training on Ray failed: {type(exc).__name__}: {lines[0] if lines else ''}; "
                            f"see {where}")


def _worker_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from quantsearch.data import prepare_data
    from quantsearch.supernet.job import build_job_run, fit_job, supernet_data, supernet_payload
    from quantsearch.supernet.trainer import load_state
    from quantsearch.train.checkpoint import load_checkpoint, save_checkpoint

    tune_host_allocator()  # a worker process of its own: the CLI's setting does not reach it
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    spec = JobSpec.model_validate(config["spec"])
    sn = spec.supernet or SupernetSpec()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    workers = _gather_workers(rank)
    data = supernet_data(spec, prepare_data(spec.data))
    fp32 = load_checkpoint(config["fp32_path"], kind="fp32")
    # Ray assigns each worker its device (cuda:<local rank> with use_gpu, else cpu): gradients all-reduce there
    run = build_job_run(spec, data, fp32, world, device=ray.train.torch.get_device())
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            load_state(run, load_checkpoint(Path(d) / "supernet.pt", kind="supernet"))
    logger = config.get("epoch_logger") if rank == 0 else None
    shape = list(data.train.image_shape)

    def save(r: Any, metrics: dict[str, float]) -> None:
        metrics = {**metrics, "resumed_from_epoch": float(r.resumed_from or 0), "world_size": float(world),
                   "on_cuda": float(next(r.model.parameters()).is_cuda),
                   "nodes": float(len({w["node_id"] for w in workers}))}
        if logger is not None:
            logger(metrics, step=int(metrics["epoch"]))
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                save_checkpoint(Path(d) / "supernet.pt", supernet_payload(r, fp32, spec, shape))
                (Path(d) / WORKERS_FILE).write_text(json.dumps(workers, indent=1))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)
        _maybe_inject_fault(config.get("fault"), rank, int(metrics["epoch"]))

    fit_job(run, data, sn, rank, world, sync_grads=_allreduce_grads if world > 1 else None, save=save)


def train_supernet_ray(spec: JobSpec, fp32_path: Path, out_dir: Path, workers: int | None = None,
                       use_gpu: bool | None = None, address: str | None = None,
                       epoch_logger: Callable[..., None] | None = None) -> RayTrainResult:
    """Run the supernet loop on Ray Train as `spec.scaling` says (`workers` / `use_gpu` override it); the same
    run name resumes. Rank 0 calls `epoch_logger(metrics, step=epoch)` after each epoch (it travels to the worker
    pickled, e.g. a tracking.EpochLogger for the stage's MLflow run)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from quantsearch.distributed.ray_env import init_ray

    sc = spec.scaling
    workers = sc.workers if workers is None else workers
    use_gpu = sc.use_gpu if use_gpu is None else use_gpu
    if workers < 1:
        raise QuantsearchError("Ray Train needs scaling.workers >= 1 (0 trains in-process: --local)")
    init_ray(address)
    storage = Path(sc.storage_path or Path(spec.output_dir) / "ray").resolve()
    storage.mkdir(parents=True, exist_ok=True)
    name = sc.run_name or f"{spec.name}-supernet"
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"spec": spec.model_dump(), "fp32_path": str(Path(fp32_path).resolve()),
                           "epoch_logger": epoch_logger, "threads": 1,
                           "fault": os.environ.get(FAULT_ENV)},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, placement_strategy=sc.placement_strategy),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=sc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=sc.num_to_keep)),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors in its own types
        raise ray_failure(exc, storage / name) from exc
    if result.checkpoint is None:
        raise QuantsearchError(f"Ray run {name} finished without a checkpoint; see {storage / name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "supernet.pt"
    with result.checkpoint.as_directory() as d:
        data = (Path(d) / "supernet.pt").read_bytes()
        placed = json.loads((Path(d) / WORKERS_FILE).read_text()) if (Path(d) / WORKERS_FILE).is_file() else []
    from quantsearch._util import atomic_write_bytes, atomic_write_json

    atomic_write_bytes(target, data)
    atomic_write_json(out_dir / WORKERS_FILE, placed)
    return RayTrainResult(target, dict(result.metrics or {}), storage / name, tuple(placed))
