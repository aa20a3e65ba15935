"""Run a job spec's stages in order (FP32 -> QAT baseline -> DQSS -> supernet), tracked in one MLflow parent run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from quantsearch._util import atomic_write_json
from quantsearch.config import JobSpec, SupernetSpec, check_calib_images, check_output_dir
from quantsearch.data import PreparedData, prepare_data
from quantsearch.errors import ConfigError
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


def _explicit_checkpoints(spec: JobSpec, stages: list[str]) -> list[tuple[str, Path]]:
    """(key, path) of each FP32 checkpoint the spec names for a stage it runs, other than the one fp32 writes."""
    own = spec.fp32_checkpoint().absolute()
    paths = [(f"{stage}.checkpoint", spec.fp32_checkpoint(stage)) for stage in ("qat", "dqss", "supernet")
             if stage in stages and (stage == "supernet" or getattr(spec, stage) is not None)]
    return [(key, path) for key, path in paths if path.absolute() != own]


def check_calibration(spec: JobSpec, data: PreparedData, stages: list[str]) -> None:
    """Calibration images a stage asks for explicitly must fit in the train split they are drawn from (a default
    larger than the split uses all of it); DQSS subsets must fit side by side."""
    n_train = len(data.train)
    split = f"the train split of {data.bundle.name}"
    if spec.qat is not None and "qat" in stages and "calib_images" in spec.qat.target.model_fields_set:
        check_calib_images("qat.target.calib_images", spec.qat.target.calib_images, n_train, split)
    dq = spec.dqss
    if dq is not None and "dqss" in stages:
        n = dq.target.calib_images
        if dq.subsets and dq.subsets * n > n_train:
            raise ConfigError(f"dqss.subsets x dqss.target.calib_images = {dq.subsets} x {n} images but {split} "
                              f"holds only {n_train}; lower one of them")
        if "calib_images" in dq.target.model_fields_set:
            check_calib_images("dqss.target.calib_images", n, n_train, split)
    sn = spec.supernet
    if sn is not None and "supernet" in stages and "calib_images" in sn.model_fields_set:
        if sn.train_images is not None and sn.train_images < n_train:
            check_calib_images("supernet.calib_images", sn.calib_images, sn.train_images,
                               "its subset (supernet.train_images)")
        check_calib_images("supernet.calib_images", sn.calib_images, n_train, split)


def preflight(spec: JobSpec, stages: list[str] | None = None, check_device: bool = True) -> PreparedData:
    """Every check a run can make before any work, in one place; writes nothing. Returns the prepared data.

    The output folder (no file in the way), the device (CUDA present when asked for), FP32 checkpoints the spec
    names (exist, readable, finite), the data, the model for its shape, the QAT/DQSS configs against their
    profiles, and calibration sizes against the train split."""
    from quantsearch.device import resolve_device
    from quantsearch.models import create
    from quantsearch.quant import QuantPolicy, convert
    from quantsearch.space import quantized_model, resolve_config
    from quantsearch.train import load_checkpoint

    stages = stages or configured_stages(spec)
    check_output_dir(spec.output_dir, "output_dir")
    if check_device:
        resolve_device(spec.device)
    ckpts = {key: load_checkpoint(path, kind="fp32") for key, path in _explicit_checkpoints(spec, stages)}
    data = prepare_data(spec.data)
    model = create(spec.model.name, data.bundle.num_classes, data.bundle.in_channels)  # builds for this data
    example = data.example(spec.seed)
    for key, section in (("qat", spec.qat), ("dqss", spec.dqss)):
        if section is None or key not in stages:
            continue
        ck = ckpts.get(f"{key}.checkpoint")
        qmodel = quantized_model(ck, example) if ck else convert(model, QuantPolicy(), example)
        resolve_config(section.target, qmodel)  # deployable on its profile
    check_calibration(spec, data, stages)
    return data


def _dqss_stage(spec: JobSpec, data: PreparedData, tracker: JobTracker, out: Path, progress: bool,
                address: str | None) -> list[StageRow]:
    from quantsearch.dqss import run_dqss
    from quantsearch.tracking.dqss_tracking import log_dqss_run, log_dqss_subsets

    dq = spec.dqss
    assert dq is not None
    fp32 = spec.fp32_checkpoint("dqss")
    config = dq.target.config
    label = config.replace("uniform:", "") if config.startswith("uniform:") else Path(config).name
    with tracker.child("dqss", {"dqss": dq.model_dump()}):
        if dq.subsets:
            from quantsearch.distributed.tune_dqss import dqss_over_subsets

            sub = dqss_over_subsets(fp32, spec.data, dq, out / "dqss", spec.seed, address, device=spec.device)
            log_dqss_subsets(tracker, sub)
            return [StageRow(f"DQSS-PTQ x{dq.subsets} subsets (combined)", label, sub.combined_val_acc,
                             sub.combined_test_acc, 0.0)]
        res = run_dqss(dq, fp32, data, out / "dqss", spec.seed, progress, device=spec.device)
        log_dqss_run(tracker, res)
    return [StageRow(f"DQSS-{dq.mode.upper()}", label, res.val_acc, res.test_acc,
                     res.search_seconds + res.finetune_seconds)]


def _supernet_stage(spec: JobSpec, data: PreparedData, tracker: JobTracker, out: Path, progress: bool,
                    workers: int, use_gpu: bool, address: str | None) -> list[StageRow]:
    import time

    from quantsearch.quant import get_profile
    from quantsearch.space import SearchSpace, load_model
    from quantsearch.supernet import save_table, train_supernet_local, uniform_table
    from quantsearch.train import load_checkpoint

    sn = spec.supernet or SupernetSpec()
    sn_dir = out / "supernet"
    t0 = time.perf_counter()
    with tracker.child("supernet", {"supernet": sn.model_dump(), "workers": workers}) as run_id:
        if workers > 0:
            from quantsearch.distributed import train_supernet_ray
            from quantsearch.tracking import EpochLogger

            res = train_supernet_ray(spec, spec.fp32_checkpoint("supernet"), sn_dir, workers, use_gpu, address,
                                     epoch_logger=EpochLogger(tracker.uri, run_id))
            from quantsearch.device import resolve_device

            model = load_model(load_checkpoint(res.checkpoint, kind="supernet")).to(resolve_device(spec.device))
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
    workers = spec.scaling.workers if workers is None else workers
    if use_gpu is None:  # a CUDA job puts its Ray Train workers on GPUs unless the spec says otherwise
        from quantsearch.device import resolve_device

        use_gpu = spec.scaling.use_gpu or (workers > 0 and resolve_device(spec.device).type == "cuda")
    out = Path(spec.output_dir)
    data = preflight(spec, stages)  # every input checked before the tracker creates the output folder
    tracker = JobTracker(spec)
    rows: list[StageRow] = []
    with tracker.parent(tags={"profile": sn.profile, "stages": ",".join(stages)}):
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
            label = spec.qat.target.config.replace("uniform:", "")
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
