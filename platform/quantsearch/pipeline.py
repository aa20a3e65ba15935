"""Run a job spec's stages in order (FP32 -> QAT baseline -> DQSS -> supernet), tracked in one MLflow parent run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from quantsearch._util import atomic_write_json
from quantsearch.config import JobSpec, SupernetSpec
from quantsearch.data import PreparedData, prepare_data
from quantsearch.tracking import JobTracker

STAGES = ("fp32", "qat", "dqss", "supernet")


@dataclass(frozen=True)
class StageRow:
    """One line of the results table."""

    stage: str
    config: str
    val_acc: float
    test_acc: float
    seconds: float


def configured_stages(spec: JobSpec) -> list[str]:
    """The stages a spec asks for, in order."""
    return (["fp32"] + (["qat"] if spec.qat else []) + (["dqss"] if spec.dqss else [])
            + (["supernet"] if spec.supernet else []))


def _dqss_stage(spec: JobSpec, data: PreparedData, tracker: JobTracker, out: Path, progress: bool,
                address: str | None) -> list[StageRow]:
    from quantsearch.dqss import run_dqss
    from quantsearch.tracking.dqss_tracking import log_dqss_run, log_dqss_subsets

    dq = spec.dqss
    assert dq is not None
    fp32 = dq.checkpoint or str(out / "fp32" / "model.pt")
    label = dq.config.replace("uniform:", "") if dq.config.startswith("uniform:") else Path(dq.config).name
    with tracker.child("dqss", {"dqss": dq.model_dump()}):
        if dq.subsets:
            from quantsearch.distributed.tune_dqss import dqss_over_subsets

            sub = dqss_over_subsets(fp32, spec.data, dq, out / "dqss", spec.seed, address)
            log_dqss_subsets(tracker, sub)
            return [StageRow(f"DQSS-PTQ x{dq.subsets} subsets (combined)", label, sub.combined_val_acc,
                             sub.combined_test_acc, 0.0)]
        res = run_dqss(dq, fp32, data, out / "dqss", spec.seed, progress)
        log_dqss_run(tracker, res)
    return [StageRow(f"DQSS-{dq.mode.upper()}", label, res.val_acc, res.test_acc,
                     res.search_seconds + res.finetune_seconds)]


def _supernet_stage(spec: JobSpec, data: PreparedData, tracker: JobTracker, out: Path, progress: bool,
                    workers: int, use_gpu: bool, address: str | None) -> list[StageRow]:
    import time

    from quantsearch.quant import get_profile
    from quantsearch.space import SearchSpace
    from quantsearch.supernet import fp32_checkpoint_path, save_table, train_supernet_local, uniform_table
    from quantsearch.train import load_checkpoint, load_model

    sn = spec.supernet or SupernetSpec()
    sn_dir = out / "supernet"
    t0 = time.perf_counter()
    with tracker.child("supernet", {"supernet": sn.model_dump(), "workers": workers}) as run_id:
        if workers > 0:
            from quantsearch.distributed import train_supernet_ray

            res = train_supernet_ray(spec, fp32_checkpoint_path(spec), sn_dir, workers, use_gpu, run_id,
                                     tracker.uri, address)
            model = load_model(load_checkpoint(res.checkpoint, kind="supernet"))
        else:
            model = train_supernet_local(spec, data, sn_dir, progress,
                                         on_epoch=lambda m: tracker.log_metrics(m, step=int(m["epoch"]))).model
        seconds = time.perf_counter() - t0
        rows = uniform_table(model, SearchSpace.for_model(model, get_profile(sn.profile)), data, sn)
        paths = save_table(rows, sn_dir)
        tracker.log_metrics({f"table.{r['config']}.{r['form']}.{k}": float(r[k])  # type: ignore[arg-type]
                             for r in rows for k in ("val_acc", "test_acc")})
        for p in (*paths.values(), sn_dir / "supernet.pt"):
            tracker.log_artifact(p, "supernet")
    return [StageRow(f"supernet {r['form']}", str(r["config"]), float(r["val_acc"]),  # type: ignore[arg-type]
                     float(r["test_acc"]), seconds if i == 0 else 0.0) for i, r in enumerate(rows)]  # type: ignore[arg-type]


def run_job(spec: JobSpec, progress: bool = True, console: Console | None = None, stages: list[str] | None = None,
            workers: int | None = None, use_gpu: bool | None = None, address: str | None = None) -> list[StageRow]:
    """Run the requested (default: configured) stages; write <output_dir>/results.json; return the rows."""
    from quantsearch.train import train_fp32, train_qat

    console = console or Console()
    stages = stages or configured_stages(spec)
    sn = spec.supernet or SupernetSpec()
    workers = sn.workers if workers is None else workers
    use_gpu = sn.use_gpu if use_gpu is None else use_gpu
    out = Path(spec.output_dir)
    tracker = JobTracker(spec)
    rows: list[StageRow] = []
    with tracker.parent(tags={"profile": sn.profile, "stages": ",".join(stages)}):
        data = prepare_data(spec.data)
        console.print(f"[bold]{spec.name}[/]: {spec.model.name} on {data.bundle.name} (train {len(data.train)}, "
                      f"val {len(data.val)}, test {len(data.test)}) -> {out}; MLflow {tracker.uri}")
        with tracker.child("fp32"):
            fp = train_fp32(spec, data, out / "fp32", progress=progress)
            tracker.log_metrics({"val_acc": fp.val_acc, "test_acc": fp.test_acc, "seconds": fp.seconds})
        rows.append(StageRow("fp32", "FP32", fp.val_acc, fp.test_acc, fp.seconds))
        if "qat" in stages and spec.qat is not None:
            with tracker.child("qat", {"qat": spec.qat.model_dump()}):
                q = train_qat(spec, data, out / "qat", progress=progress)
                tracker.log_metrics({"calibrated_val_acc": q.ptq_val_acc, "val_acc": q.val_acc,
                                     "test_acc": q.test_acc})
            label = spec.qat.config.replace("uniform:", "")
            rows.append(StageRow("calibrated (MSE clip)", label, q.ptq_val_acc, float("nan"), 0.0))
            rows.append(StageRow(f"LSQ QAT {q.epochs} ep", label, q.val_acc, q.test_acc, q.seconds))
        if "dqss" in stages and spec.dqss is not None:
            rows += _dqss_stage(spec, data, tracker, out, progress, address)
        if "supernet" in stages:
            rows += _supernet_stage(spec, data, tracker, out, progress, workers, use_gpu, address)
        atomic_write_json(out / "results.json", [r.__dict__ for r in rows])
        tracker.log_artifact(out / "results.json")
    console.print(results_table(rows))
    return rows


def results_table(rows: list[StageRow]) -> Table:
    """A rich table of stage results."""
    table = Table(title="quantsearch results")
    for col in ("stage", "config", "val acc %", "test acc %", "train s"):
        table.add_column(col)
    for r in rows:
        fmt = lambda v: "-" if v != v else f"{100 * v:.2f}"  # noqa: E731 - NaN renders as '-'
        table.add_row(r.stage, r.config, fmt(r.val_acc), fmt(r.test_acc), f"{r.seconds:.0f}" if r.seconds else "-")
    return table
