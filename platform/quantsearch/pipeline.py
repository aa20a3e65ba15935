"""Run a job spec's stages in order (FP32 -> QAT baseline -> DQSS -> supernet -> sample -> predictor -> search ->
export), tracked in one MLflow parent run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from quantsearch._util import atomic_write_json
from quantsearch.config import JobSpec, SupernetSpec, check_calib_images, check_output_dir
from quantsearch.data import PreparedData, prepare_data
from quantsearch.errors import ConfigError, OutputError
from quantsearch.stages import ExportPlan, export_plan
from quantsearch.tracking import JobTracker

STAGES = ("fp32", "qat", "dqss", "supernet", "sample", "predictor", "search", "export")


@dataclass(frozen=True)
class StageRow:
    """One line of the results table."""

    stage: str
    config: str
    val_acc: float
    test_acc: float
    seconds: float
    bitops: float = float("nan")


def configured_stages(spec: JobSpec) -> list[str]:
    """The stages a spec asks for, in order."""
    return (["fp32"] + (["qat"] if spec.qat else []) + (["dqss"] if spec.dqss else [])
            + (["supernet"] if spec.supernet else []) + (["sample"] if spec.sample else [])
            + (["predictor"] if spec.predictor else []) + (["search"] if spec.search else [])
            + (["export"] if spec.export else []))


def check_search_inputs(spec: JobSpec, stages: list[str], from_run: str | None = None) -> None:
    """The files the search half reads must exist unless an earlier stage of this run writes them: the supernet
    checkpoint (sample, search), the measured table (predictor), the fitted predictor (search with CQAP)."""
    from quantsearch.supernet.sample_job import supernet_checkpoint

    out = Path(spec.output_dir)
    sample = spec.sample
    needs_sn = [s for s in ("sample", "search") if s in stages]
    ckpt = supernet_checkpoint(spec, sample.checkpoint if sample else None)
    if needs_sn and "supernet" not in stages and not ckpt.is_file():
        raise ConfigError(f"{needs_sn[0]} needs a trained supernet at {ckpt}: run `quantsearch supernet train` "
                          "first, or set sample.checkpoint")
    if "predictor" in stages and "sample" not in stages and not from_run \
            and not (out / "sample" / "measured.parquet").is_file():
        raise ConfigError(f"predictor needs measured subnets at {out / 'sample' / 'measured.parquet'}: run "
                          "`quantsearch sample` first (or `quantsearch predictor fit --from-run RUN_ID`)")
    search = spec.search
    if search is not None and "search" in stages:
        if not search.budget.is_set():
            raise ConfigError("search needs a budget: search.budget.bitops, .weight_bytes or .avg_bits "
                              "(CLI: --budget-bitops W3A3 | --budget-bytes N | --budget-avg-bits B)")
        from quantsearch.quant import get_profile

        get_profile(search.profile)
        if search.fitness == "predictor" and "predictor" not in stages \
                and not (out / "predictor" / "predictor").is_dir():
            raise ConfigError(f"search with fitness: predictor needs a fitted CQAP at {out / 'predictor'}: run "
                              "`quantsearch predictor fit` first, or use --fitness measured")
        if search.dqss and spec.dqss is None:
            raise ConfigError("search.dqss runs DQSS on the best subnet: add a dqss section (its mode and iters)")


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


def preflight(spec: JobSpec, stages: list[str] | None = None, check_device: bool = True,
              from_run: str | None = None) -> PreparedData:
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
    for key, got in ckpts.items():  # a checkpoint of another model or dataset would quantize the wrong network
        if (got["model_name"], got["dataset"]) != (spec.model.name, spec.data.name):
            raise ConfigError(f"{key} holds {got['model_name']} trained on {got['dataset']}, but the job is "
                              f"{spec.model.name} on {spec.data.name}; point {key} at a checkpoint of the job's model "
                              "and data, or set model.name and data.name to the checkpoint's")
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
    check_search_inputs(spec, stages, from_run)
    if "export" in stages:
        _check_export_inputs(spec, stages)
    return data


def _check_export_inputs(spec: JobSpec, stages: list[str]) -> None:
    """The export's source is made by this run or exists on disk; its profile exists."""
    from quantsearch.quant import get_profile

    plan = export_plan(spec)
    if plan.profile is not None:
        get_profile(plan.profile)
    if plan.producer in stages:
        return
    for path in (plan.strategy, plan.subnet, plan.checkpoint):
        if path is not None and not path.is_file():
            raise ConfigError(f"export of '{plan.source}' reads {path}, which does not exist: run the {plan.producer} "
                              f"stage first, or set export.source")


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


def _chunk_runner(spec: JobSpec, out: Path, name: str, workers: int | None, address: str | None, test: bool = False
                  ) -> object | None:
    """Ray Tune trials measuring chunks when spec.sample.workers > 0 (else None: in-process)."""
    from quantsearch.config import SampleSpec

    ss = spec.sample or SampleSpec()
    n = ss.workers if workers is None else workers
    if n <= 0:
        return None
    from quantsearch.device import resolve_device
    from quantsearch.distributed.tune_sample import tune_chunks
    from quantsearch.supernet.sample_job import context_args

    dev = "cuda" if resolve_device(spec.device).type == "cuda" else "cpu"
    storage = Path(spec.scaling.storage_path) if spec.scaling.storage_path else out / "ray"
    return tune_chunks(context_args(spec), n, storage, name, address, dev, test)


def _sample_stage(spec: JobSpec, data: PreparedData, tracker: JobTracker, out: Path, workers: int | None,
                  address: str | None) -> list[StageRow]:
    from quantsearch.config import SampleSpec
    from quantsearch.device import resolve_device
    from quantsearch.supernet.sample_job import sample_job
    from quantsearch.tracking.search_tracking import chunk_logger, log_sample

    ss = spec.sample or SampleSpec()
    with tracker.child("sample", {"sample": ss.model_dump()}):
        res = sample_job(spec, data, out / "sample", _chunk_runner(spec, out, "sample", workers, address),  # type: ignore[arg-type]
                         on_chunk=chunk_logger(tracker), device=resolve_device(spec.device))
        log_sample(tracker, res)
    accs = [float(r["val_acc"]) for r in res.rows]
    return [StageRow(f"sample: {len(res.rows)} subnets ({res.new} new)", "val mean", sum(accs) / max(len(accs), 1),
                     float("nan"), res.seconds)]


def _predictor_stage(spec: JobSpec, tracker: JobTracker, out: Path, from_run: str | None = None,
                     fetched: Path | None = None) -> list[StageRow]:
    import shutil

    from quantsearch.config import PredictorSpec
    from quantsearch.predictor.job import fit_predictor_job, load_sample_dir
    from quantsearch.tracking.predictor_tracking import log_predictor

    ps = spec.predictor or PredictorSpec()
    with tracker.child("predictor", {"predictor": ps.model_dump(), "from_run": from_run or ""}):
        folder = out / "sample"
        if fetched is not None:  # the run's table, fetched (and checked) before anything was written
            folder = out / "predictor" / "from-run"
            shutil.copytree(fetched, folder, dirs_exist_ok=True)
        rows, space = load_sample_dir(folder)
        res = fit_predictor_job(rows, space, ps, out / "predictor", spec.seed, compare=True)
        log_predictor(tracker, res)
    m = res.fit.report
    return [StageRow(f"CQAP {ps.model}: held-out tau {m.overall.tau:.3f} (BitOps bands {m.band_tau:.3f}; "
                     f"proxy avg-bits {m.overall.tau_avg_bits:.3f})", f"{m.n_heldout} held out", float("nan"),
                     float("nan"), m.fit_seconds)]


def _search_stage(spec: JobSpec, data: PreparedData, tracker: JobTracker, out: Path, progress: bool,
                  workers: int | None, address: str | None, console: Console) -> tuple[list[StageRow], object]:
    from quantsearch.config import SearchSpec
    from quantsearch.device import resolve_device
    from quantsearch.search.job import search_job
    from quantsearch.search.nsga import GenerationStats
    from quantsearch.tracking.search_tracking import log_search

    ss = spec.search or SearchSpec()
    fitness = None
    if ss.fitness == "predictor":
        from quantsearch.predictor import Predictor

        fitness = Predictor.load(out / "predictor" / "predictor").predict

    def show(gen: int, stats: GenerationStats) -> None:
        if progress:
            best = "-" if stats.best_accuracy is None else f"{100 * stats.best_accuracy:.2f} %"
            console.print(f"  search generation {gen}/{ss.generations}: {stats.n_evaluations} configs scored, "
                          f"best {best} ({ss.fitness}), front of {stats.front_size}")

    with tracker.child("search", {"search": ss.model_dump()}):
        res = search_job(spec, data, out / "search", fitness,
                         run_chunks=_chunk_runner(spec, out, "search-measure", workers, address),  # type: ignore[arg-type]
                         run_chunks_test=_chunk_runner(spec, out, "search-finalists", workers, address, True),  # type: ignore[arg-type]
                         progress=show, device=resolve_device(spec.device))
        log_search(tracker, res)
    rows = [StageRow(f"supernet uniform {u['label']}", "within budget" if u["within_budget"] else "over budget",
                     u["val_acc"], u["test_acc"], 0.0, u["bitops"]) for u in res.uniform]
    b = res.best
    rows.append(StageRow(f"searched mixed ({ss.fitness}; CQAP {100 * b['predicted_acc']:.2f})",
                         f"mean W{b['avg_w_bits']:.2f}A{b['avg_a_bits']:.2f}", b["val_acc"], b["test_acc"],
                         res.search_seconds + res.measure_seconds, b["bitops"]))
    return rows, res


def _dqss_on_best(spec: JobSpec, data: PreparedData, tracker: JobTracker, out: Path, progress: bool,
                  bitops: float) -> list[StageRow]:
    """DQSS-PTQ/QAT of the FP32 model at the searched subnet's per-layer bits (search.dqss)."""
    from quantsearch.dqss import run_dqss
    from quantsearch.tracking.dqss_tracking import log_dqss_run

    dq = spec.dqss
    assert dq is not None
    best = out / "search" / "best.json"
    dq_best = dq.model_copy(update={"target": dq.target.model_copy(update={"config": str(best)})})
    with tracker.child("dqss-best", {"dqss": dq_best.model_dump()}):
        res = run_dqss(dq_best, spec.fp32_checkpoint("dqss"), data, out / "dqss-best", spec.seed, progress,
                       device=spec.device)
        log_dqss_run(tracker, res)
    return [StageRow(f"searched mixed + DQSS-{dq.mode.upper()} (FP32 weights)", "best.json bits", res.val_acc,
                     res.test_acc, res.search_seconds + res.finetune_seconds, bitops)]


def _better_of_search_and_dqss(spec: JobSpec, plan: ExportPlan, out: Path) -> ExportPlan:
    """source auto after a search with DQSS: the searched subnet (supernet weights) or DQSS on its bits (FP32
    weights), whichever measured the better val accuracy (the search's subnet on a tie)."""
    import json

    dq_metrics = out / "dqss-best" / "metrics.json"
    best = out / "search" / "best.json"
    if not (dq_metrics.is_file() and best.is_file()):
        return plan
    dq_val = float(json.loads(dq_metrics.read_text())["val_acc"])
    search_val = float(json.loads(best.read_text())["measured_val_acc"])
    if dq_val > search_val:
        return plan
    return export_plan(spec.model_copy(update={"export": spec.export.model_copy(update={"source": "search"})}))  # type: ignore[union-attr]


def _export_stage(spec: JobSpec, data: PreparedData, tracker: JobTracker, out: Path) -> list[StageRow]:
    """Export the planned result to <output_dir>/export/model.onnx, check it on the test split, register it."""
    from quantsearch.config import SampleSpec
    from quantsearch.export.job import export_model, load_source
    from quantsearch.tracking.export_tracking import log_export

    ex = spec.export
    assert ex is not None
    plan = export_plan(spec)
    if ex.source == "auto" and plan.source == "search-dqss":
        plan = _better_of_search_and_dqss(spec, plan, out)
    sa = spec.sample or SampleSpec()
    register = ex.registry_name or spec.name
    with tracker.child("export", {"export": ex.model_dump(), "source": plan.source}) as run_id:
        source = load_source(plan.checkpoint, subnet=None if plan.subnet is None else str(plan.subnet),
                             strategy=plan.strategy, data=data, bn_images=sa.bn_images,
                             seed=spec.seed if sa.seed is None else sa.seed)
        res = export_model(source, data, out / "export" / "model.onnx", profile=plan.profile, opset=ex.opset,
                           check_images=ex.check_images, top1_tol=ex.top1_tol, logit_tol=ex.logit_tol, seed=spec.seed,
                           calib_images=ex.calib_images,
                           provenance={"job": spec.name, "mlflow": {"tracking_uri": tracker.uri,
                                                                    "parent_run_id": tracker.run_id, "run_id": run_id},
                                       "job_spec": spec.model_dump(mode="json")})
        version = log_export(tracker, res, register)
    ort = float("nan") if res.ort_top1 is None else res.ort_top1 / 100
    return [StageRow(f"ONNX export ({plan.source}) in onnxruntime; PyTorch {res.torch_top1:.2f} %",
                     f"{register} v{version}, |dlogit| {res.max_abs_logit_diff:.0e}", float("nan"), ort, res.seconds)]


def select_stages(spec: JobSpec, only: str | None = None, from_stage: str | None = None) -> list[str]:
    """The stages a run executes: all configured ones, only one (`--only`), or one and those after it (`--from`)."""
    from quantsearch._util import suggest

    configured = configured_stages(spec)
    if only and from_stage:
        raise ConfigError("--only and --from exclude each other: give one of them")
    for flag, name in (("--only", only), ("--from", from_stage)):
        if name is None:
            continue
        if name not in STAGES:
            raise ConfigError(f"{flag} {name}: unknown stage{suggest(name, STAGES)}; stages: {', '.join(STAGES)}")
        if name not in configured:
            raise ConfigError(f"{flag} {name}: this job spec has no {name} section (it runs "
                              f"{', '.join(configured)}); add the section or pick one of those")
    if only:
        return [only]
    return configured[configured.index(from_stage):] if from_stage else configured


def check_stage_order(spec: JobSpec, stages: list[str]) -> None:
    """A stage that starts from this run's FP32 model needs it on disk when the fp32 stage is not run now."""
    if "fp32" in stages:
        return
    own = Path(spec.output_dir) / "fp32" / "model.pt"
    for stage in ("qat", "dqss", "supernet"):
        if stage in stages and spec.fp32_checkpoint(stage).absolute() == own.absolute() and not own.is_file():
            raise ConfigError(f"{stage} starts from the FP32 model at {own}, which does not exist: run the fp32 "
                              f"stage first (`quantsearch run JOB --only fp32`) or set {stage}.checkpoint")


@dataclass(frozen=True)
class FrontRows:
    """The rows the front table shows: the search's finalists and the uniform configs (as measured)."""

    finalists: list[dict[str, object]]
    uniform: list[dict[str, object]]


def _json_rows(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Rows as plain JSON values (numpy scalars become Python numbers)."""
    import json

    return json.loads(json.dumps(rows, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


@dataclass
class _RunState:
    """What the stages of one run share: the spec, data, tracker, console and the Ray settings."""

    spec: JobSpec
    data: PreparedData
    tracker: JobTracker
    out: Path
    console: Console
    progress: bool
    workers: int
    tune_workers: int | None
    use_gpu: bool
    address: str | None
    from_run: str | None
    fetched: Path | None


def _run_stage(stage: str, st: _RunState) -> tuple[list[StageRow], dict[str, object]]:
    """Run one stage; return its result rows and what else the run's summary needs from it."""
    from quantsearch.train import train_fp32, train_qat

    spec, data, tracker, out = st.spec, st.data, st.tracker, st.out
    if stage == "fp32":
        with tracker.child("fp32"):
            fp = train_fp32(spec, data, out / "fp32", progress=st.progress)
            tracker.log_metrics({"val_acc": fp.val_acc, "test_acc": fp.test_acc, "seconds": fp.seconds})
        return [StageRow("fp32", "FP32", fp.val_acc, fp.test_acc, fp.seconds)], {}
    if stage == "qat":
        assert spec.qat is not None
        with tracker.child("qat", {"qat": spec.qat.model_dump()}):
            q = train_qat(spec, data, out / "qat", progress=st.progress)
            tracker.log_metrics({"calibrated_val_acc": q.ptq_val_acc, "val_acc": q.val_acc, "test_acc": q.test_acc})
        label = spec.qat.target.config.replace("uniform:", "")
        return [StageRow("calibrated (MSE clip)", label, q.ptq_val_acc, float("nan"), 0.0),
                StageRow(f"LSQ QAT {q.epochs} ep", label, q.val_acc, q.test_acc, q.seconds)], {}
    if stage == "dqss":
        return _dqss_stage(spec, data, tracker, out, st.progress, st.address), {}
    if stage == "supernet":
        return _supernet_stage(spec, data, tracker, out, st.progress, st.workers, st.use_gpu, st.address), {}
    if stage == "sample":
        return _sample_stage(spec, data, tracker, out, st.tune_workers, st.address), {}
    if stage == "predictor":
        return _predictor_stage(spec, tracker, out, st.from_run, st.fetched), {}
    if stage == "search":
        rows, found = _search_stage(spec, data, tracker, out, st.progress, st.tune_workers, st.address, st.console)
        if spec.search is not None and spec.search.dqss:
            rows += _dqss_on_best(spec, data, tracker, out, st.progress, found.best["bitops"])  # type: ignore[attr-defined]
        return rows, {"finalists": _json_rows(found.finalists), "uniform": _json_rows(found.uniform)}  # type: ignore[attr-defined]
    if stage == "export":
        return _export_stage(spec, data, tracker, out), {}
    raise ConfigError(f"unknown stage '{stage}'; stages: {', '.join(STAGES)}")


def _summary_header(spec: JobSpec, data: PreparedData, tracker: JobTracker, skip_done: bool) -> dict[str, str]:
    return {"job": spec.name, "model": spec.model.name,
            "data": f"{data.bundle.name} (train {len(data.train)}, val {len(data.val)}, test {len(data.test)})",
            "device": spec.device, "seed": str(spec.seed), "output folder": str(Path(spec.output_dir).absolute()),
            "MLflow": f"{tracker.uri}, parent run {tracker.run_id}",
            "rerun": ("`quantsearch run` again skips the stages that are up to date; --force reruns them"
                      if skip_done else "this run reran every stage it was given")}


def run_job(spec: JobSpec, progress: bool = True, console: Console | None = None, stages: list[str] | None = None,
            workers: int | None = None, use_gpu: bool | None = None, address: str | None = None,
            from_run: str | None = None, skip_done: bool = False) -> list[StageRow]:
    """Run the requested (default: configured) stages; write <output_dir>/results.json and summary.md; return the
    rows.

    `workers` overrides the Ray workers of the stage it is given for (Train workers for the supernet, Tune trials
    for sample/search); `from_run` makes the predictor read its measured table from that MLflow run; `skip_done`
    skips each stage whose marker shows it finished with the same inputs (`quantsearch run` without --force)."""
    import time

    from quantsearch.resume import load_marker, stage_inputs, stage_key, up_to_date, write_marker
    from quantsearch.summary import StageStatus, render_summary, write_summary

    console = console or Console()
    stages = stages or configured_stages(spec)
    sn = spec.supernet or SupernetSpec()
    n_workers = spec.scaling.workers if workers is None else workers
    if use_gpu is None:  # a CUDA job puts its Ray Train workers on GPUs unless the spec says otherwise
        from quantsearch.device import resolve_device

        use_gpu = spec.scaling.use_gpu or (n_workers > 0 and resolve_device(spec.device).type == "cuda")
    out = Path(spec.output_dir)
    check_stage_order(spec, stages)
    data = preflight(spec, stages, from_run=from_run)  # all checked before the tracker writes anything
    tracker = JobTracker(spec)
    fetched = None
    if from_run and "predictor" in stages:  # an unknown run or one without a table fails here, writing nothing
        import tempfile

        from quantsearch.tracking.predictor_tracking import measured_table_from_run

        fetched = measured_table_from_run(tracker.uri, from_run, Path(tempfile.mkdtemp(prefix="qs-from-run-")))
    st = _RunState(spec, data, tracker, out, console, progress, n_workers, workers, use_gpu, address, from_run,
                   fetched)
    rows: list[StageRow] = []
    statuses: list[StageStatus] = []
    found: FrontRows | None = None
    failure: str | None = None
    with tracker.parent(tags={"profile": sn.profile, "stages": ",".join(stages)}):
        console.print(f"[bold]{spec.name}[/]: {spec.model.name} on {data.bundle.name} (train {len(data.train)}, "
                      f"val {len(data.val)}, test {len(data.test)}) -> {out}; MLflow {tracker.uri}")
        stage = ""
        try:
            for stage in stages:
                inputs = stage_inputs(spec, stage, from_run)
                key = stage_key(spec, inputs)
                marker = load_marker(out, stage)
                if skip_done and marker is not None and up_to_date(marker, key, inputs):
                    rows += [StageRow(**r) for r in marker.rows]
                    if stage == "search":
                        found = FrontRows(**marker.extra)
                    statuses.append(StageStatus(stage, "skipped (up to date)", 0.0,
                                                f"made {marker.finished} by MLflow run {marker.mlflow_run_id}"))
                    console.print(f"  {stage}: up to date (finished {marker.finished}), skipped")
                    continue
                t0 = time.perf_counter()
                new, extra = _run_stage(stage, st)
                rows += new
                if stage == "search":
                    found = FrontRows(**extra)  # type: ignore[arg-type]
                write_marker(spec, inputs, key, [r.__dict__ for r in new], extra, tracker.run_id)
                statuses.append(StageStatus(stage, "ran", time.perf_counter() - t0))
            atomic_write_json(out / "results.json", [r.__dict__ for r in rows])
            tracker.log_artifact(out / "results.json")
        except BaseException as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            failure = f"stage {stage}: {type(exc).__name__}{': ' + first if first else ''}"
            statuses.append(StageStatus(stage, "FAILED", 0.0, "rerun `quantsearch run` to resume here"))
            raise
        finally:
            text = render_summary(spec.name, _summary_header(spec, data, tracker, skip_done), statuses,
                                  [r.__dict__ for r in rows], out, failure)
            try:
                path = write_summary(out, text)
            except OutputError:
                if failure is None:
                    raise  # else the stage's own error (say, the disk filled up there) is the one to report
            else:
                if failure is None:
                    tracker.log_artifact(path)
    if found is not None:
        console.print(front_table(found))
    console.print(results_table(rows))
    return rows


def front_table(res: object) -> Table:
    """The searched front's finalists (predicted vs measured) and the uniform configs, by BitOps."""
    table = Table(title="search: finalists measured for real, and uniform configs (supernet, BN recalibrated)")
    for col in ("config", "BitOps (M)", "weight KB", "mean bits W/A", "CQAP %", "val %", "test %"):
        table.add_column(col)
    items = [("searched", r) for r in res.finalists] + [(r["label"], r) for r in res.uniform]  # type: ignore[attr-defined]
    for label, r in sorted(items, key=lambda t: t[1]["bitops"]):
        pred = f"{100 * r['predicted_acc']:.2f}" if "predicted_acc" in r else "-"
        table.add_row(label, f"{r['bitops'] / 1e6:.1f}", f"{r['weight_bytes'] / 1024:.1f}",
                      f"{r['avg_w_bits']:.2f}/{r['avg_a_bits']:.2f}", pred, f"{100 * r['val_acc']:.2f}",
                      f"{100 * r['test_acc']:.2f}")
    return table


def results_table(rows: list[StageRow]) -> Table:
    """A rich table of stage results."""
    table = Table(title="quantsearch results")
    for col in ("stage", "config", "BitOps (M)", "val acc %", "test acc %", "train s"):
        table.add_column(col)
    for r in rows:
        fmt = lambda v: "-" if v != v else f"{100 * v:.2f}"  # noqa: E731 - NaN renders as '-'
        table.add_row(r.stage, r.config, "-" if r.bitops != r.bitops else f"{r.bitops / 1e6:.1f}", fmt(r.val_acc),
                      fmt(r.test_acc), f"{r.seconds:.0f}" if r.seconds else "-")
    return table
