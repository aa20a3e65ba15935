"""The `quantsearch` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from quantsearch import __version__
from quantsearch.allocator import tune_host_allocator
from quantsearch.errors import ConfigError, QuantsearchError

if TYPE_CHECKING:
    import torch


# the registry's names (quantsearch.quant.registry.CALIBRATORS), spelled out so that `--help` does not import torch;
# tests/unit/test_cli.py checks the two agree
METHOD_NAMES = ("maxabs", "mse", "kl", "admm", "easyquant", "torchao-minmax", "torchao-histogram")


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments as one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"quantsearch: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def _job_from_args(args: argparse.Namespace) -> object:
    from quantsearch.config import JobSpec, apply_overrides, load_job, validate_spec

    if getattr(args, "job", None):
        spec = load_job(args.job, args.set or [])
    else:
        spec = validate_spec(apply_overrides({}, args.set or []))
    assert isinstance(spec, JobSpec)
    return spec


def _override(spec: object, **sections: dict[str, object]) -> object:
    """Set CLI values (None = not given) on a spec and validate again. Only the values the spec set itself or the
    CLI gives count as set (`model_fields_set`): checks that apply to explicit values only (calib_images) rely on it."""
    from quantsearch.config import validate_spec

    raw = spec.model_dump(exclude_unset=True)  # type: ignore[attr-defined]
    for section, values in sections.items():
        for key, value in values.items():
            if value is None:
                continue
            cur = raw
            for part in ([section] if section else []) + key.split(".")[:-1]:  # "target.config": nested
                if cur.get(part) is None:
                    cur[part] = {}
                cur = cur[part]
            cur[key.split(".")[-1]] = value
    return validate_spec(raw)


def _device(name: str | None) -> torch.device:
    """Resolve --device early (cuda without a GPU is one line, before any work); None means auto."""
    from quantsearch.device import resolve_device

    return resolve_device(name or "auto")


def _out_dir(path: str) -> Path:
    """--out must be a folder or creatable; nothing is created here."""
    from quantsearch.config import check_output_dir

    return check_output_dir(path, "--out")


def _check_config_flag(config: str, flag: str) -> None:
    """A config built from --bits / --config / --subnet, checked with the flag named (bits 2..8, file exists)."""
    from quantsearch.config import check_config_string

    try:
        check_config_string(config)
    except ConfigError as exc:
        raise ConfigError(f"{flag}: {exc}") from exc


def _check_calib(value: int | None, data: object, flag: str = "--calib-images") -> None:
    """An explicit --calib-images above what the train split holds is an error (the default uses all of it)."""
    from quantsearch.config import check_calib_images

    if value is not None:
        check_calib_images(flag, value, len(data.train),  # type: ignore[attr-defined]
                           f"the train split of {data.bundle.name}")  # type: ignore[attr-defined]


def cmd_models_list(args: argparse.Namespace) -> int:
    """Print the model registry."""
    from quantsearch.models import list_models

    for name, desc in list_models(include_torchvision=not args.reference_only).items():
        print(f"{name:28s} {desc}")
    return 0


def cmd_profiles_list(args: argparse.Namespace) -> int:
    """Print the backend profiles."""
    from quantsearch.quant import list_profiles

    for p in list_profiles().values():
        print(f"{p.name:22s} W{list(p.weight_bits)} A{list(p.act_bits)} {'/'.join(p.weight_granularity)} "
              f"wsym={list(p.weight_symmetric)} asym={list(p.act_symmetric)}  {p.description}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    """Print dataset facts: source, image shape, classes, split sizes, in memory or streamed."""
    from quantsearch.config import DataSpec, load_job, make_section
    from quantsearch.data import prepare_data

    base = load_job(args.job, args.set or []).data.model_dump(exclude_unset=True) if args.job else {}
    stream = {"true": True, "false": False}.get(args.stream, args.stream)
    d = prepare_data(make_section(DataSpec, "data", **{**base, **{k: v for k, v in {
        "name": args.data, "root": args.root, "val_size": args.val_size, "image_size": args.image_size,
        "stream": stream}.items() if v is not None}}))
    b = d.bundle
    c, h, w = d.train.image_shape
    names = f" ({', '.join(b.classes[:10])}{', ...' if len(b.classes) > 10 else ''})" if b.classes else ""
    mb = sum(s.nbytes for s in (d.train, d.val, d.test)) / 2**20
    workers = getattr(d.train, "workers", 0)
    storage = (f"streamed: files decoded per batch by {workers} DataLoader worker(s) ({mb:.1f} MB if decoded)"
               if b.streams else f"in memory ({mb:.1f} MB)")
    val_note = " (val: its own val/ folder)" if b.val is not None else ""
    print(f"dataset      {b.name}\nsource       {b.source}\nimage        {c}x{h}x{w}"
          f"\nclasses      {b.num_classes}{names}\ntrain / val  {len(d.train)} / {len(d.val)}{val_note}"
          f"\ntest         {len(d.test)}\nstorage      {storage}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train an FP32 model."""
    from quantsearch.data import prepare_data
    from quantsearch.train import train_fp32

    out = _out_dir(args.out)
    spec = _override(_job_from_args(args), data={"name": args.data, "train_limit": args.train_limit},
                     model={"name": args.model},
                     training={"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size},
                     **{"": {"seed": args.seed, "device": args.device}})
    _device(spec.device)  # type: ignore[attr-defined]
    from quantsearch.models import create

    data = prepare_data(spec.data)  # type: ignore[attr-defined]
    create(spec.model.name, data.bundle.num_classes, data.bundle.in_channels)  # type: ignore[attr-defined]
    res = train_fp32(spec, data, out, resume=not args.no_resume, progress=not args.quiet)  # type: ignore[arg-type]
    print(f"model {spec.model.name}: val {100 * res.val_acc:.2f}%  test {100 * res.test_acc:.2f}%  "  # type: ignore[attr-defined]
          f"params {res.params}  {res.epochs} epochs  {res.seconds:.0f}s  -> {res.checkpoint}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint, or the model a DQSS strategy file describes, on the test (or val) split."""
    from quantsearch.config import DataSpec, make_section
    from quantsearch.data import prepare_data
    from quantsearch.space import load_model
    from quantsearch.train import evaluate, load_checkpoint

    dev = _device(args.device)
    if args.strategy:
        from quantsearch.dqss import Strategy, build_from_strategy, strategy_weights

        st = Strategy.load(args.strategy)
        model = build_from_strategy(args.strategy, args.checkpoint)
        label = f"{args.strategy}: DQSS-{st.mode.upper()} strategy"
        dataset = load_checkpoint(args.checkpoint or strategy_weights(args.strategy, st))["dataset"]
    elif args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint)
        model = load_model(ckpt)
        label = f"{args.checkpoint}: {ckpt['kind']} {ckpt['model_name']}"
        dataset = ckpt["dataset"]
    else:
        raise ConfigError("eval needs --checkpoint MODEL.pt or --strategy strategy.json")
    data = prepare_data(make_section(DataSpec, "data", name=args.data or dataset, root=args.root,
                                     test_limit=args.limit))
    split = data.test if args.split == "test" else data.val
    model = model.to(dev)
    res = evaluate(model, split, data.mean, data.std, device=dev)
    print(f"{label}  {args.split} top-1 {100 * res.top1:.2f}%  loss {res.loss:.4f}  n={res.n}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate a job spec."""
    from quantsearch.config import load_job
    from quantsearch.pipeline import configured_stages, preflight

    spec = load_job(args.job, args.set or [])
    stages = configured_stages(spec)
    # everything `run` checks before work, except whether this machine has the GPU the spec asks for
    data = preflight(spec, stages, check_device=False)
    print(f"{args.job}: valid job '{spec.name}' ({spec.model.name} on {spec.data.name}, train {len(data.train)} / "
          f"val {len(data.val)} / test {len(data.test)}; device {spec.device}; stages: {', '.join(stages)})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run a job spec end to end."""
    from quantsearch.config import load_job
    from quantsearch.pipeline import run_job, select_stages

    spec = load_job(args.job, args.set or [])
    if args.device:
        spec = _override(spec, **{"": {"device": args.device}})  # type: ignore[assignment]
    stages = select_stages(spec, args.only, args.from_stage)
    # stages named with --only/--from run even when up to date; otherwise finished stages are skipped
    skip = not (args.force or args.only or args.from_stage)
    run_job(spec, progress=not args.quiet, stages=stages, skip_done=skip)
    return 0


def cmd_qat(args: argparse.Namespace) -> int:
    """LSQ QAT of one fixed config from an FP32 checkpoint."""
    from quantsearch.data import prepare_data
    from quantsearch.train import load_checkpoint, train_qat

    out = _out_dir(args.out)
    ckpt = load_checkpoint(args.checkpoint, kind="fp32")
    spec = _job_from_args(args)
    raw_qat = {"target.config": args.config, "checkpoint": args.checkpoint, "epochs": args.epochs,
               "target.profile": args.profile, "target.calib_images": args.calib_images, "lr": args.lr,
               "compile": args.compile}
    spec = _override(spec, data={"name": ckpt["dataset"], "train_limit": args.train_limit},
                     qat={k: v for k, v in raw_qat.items() if v is not None},
                     **{"": {"seed": args.seed, "device": args.device}})
    _device(spec.device)  # type: ignore[attr-defined]
    data = prepare_data(spec.data)  # type: ignore[attr-defined]
    target = spec.qat.target  # type: ignore[attr-defined]
    _check_calib(target.calib_images if "calib_images" in target.model_fields_set else None, data,
                 "--calib-images" if args.calib_images is not None else "qat.target.calib_images")
    res = train_qat(spec, data, out, progress=not args.quiet)  # type: ignore[arg-type]
    print(f"{args.config} ({res.config.summary()}): calibrated val {100 * res.ptq_val_acc:.2f}%  "
          f"QAT val {100 * res.val_acc:.2f}%  test {100 * res.test_acc:.2f}%  {res.epochs} epochs "
          f"{res.seconds:.0f}s -> {res.checkpoint}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """PTQ of one uniform config with a named calibration method."""
    from quantsearch.config import DataSpec, QuantTarget, make_section
    from quantsearch.data import prepare_data
    from quantsearch.quant.registry import check_calibrator
    from quantsearch.train import load_checkpoint
    from quantsearch.train.ptq import calibrate_ptq

    out = _out_dir(args.out)
    for m in (args.method, args.weight_method):
        if m is not None:
            check_calibrator(m)
    dev = _device(args.device)
    ckpt = load_checkpoint(args.checkpoint, kind="fp32")
    config = args.config or f"uniform:W{args.bits}A{args.bits}"
    _check_config_flag(config, "--config" if args.config else f"--bits {args.bits}")
    target = make_section(QuantTarget, "--", config=config, profile=args.profile, calib_images=args.calib_images,
                          act_symmetric=args.act_symmetric)
    data = prepare_data(make_section(DataSpec, "data", name=ckpt["dataset"], test_limit=args.test_limit))
    _check_calib(args.calib_images, data)
    res = calibrate_ptq(args.checkpoint, data, target, args.method, args.weight_method or args.method, out,
                        args.seed, device=dev)
    print(f"{config} ({res.config.summary()}) calibrated with {res.method}: val {100 * res.val_acc:.2f}%  "
          f"test {100 * res.test_acc:.2f}%  ({res.seconds:.1f}s) -> {res.checkpoint}")
    return 0


def cmd_dqss(args: argparse.Namespace) -> int:
    """DQSS: choose each layer's calibration algorithm for activations and weights by gradient (PTQ or QAT)."""
    from quantsearch.config import DataSpec, DQSSSpec, JobSpec, make_section
    from quantsearch.data import prepare_data
    from quantsearch.dqss import run_dqss
    from quantsearch.space import quantized_model, resolve_config
    from quantsearch.tracking import JobTracker
    from quantsearch.tracking.dqss_tracking import log_dqss_run, log_dqss_subsets
    from quantsearch.train import load_checkpoint

    out = _out_dir(args.out)
    dev = _device(args.device)
    ckpt = load_checkpoint(args.checkpoint, kind="fp32")
    config = args.subnet or f"uniform:W{args.bits}A{args.bits}"
    if args.search_epochs <= 0 or args.finetune_epochs < 0:
        raise ConfigError("--search-epochs must be > 0 and --finetune-epochs >= 0")
    if args.mode == "qat" and args.subsets:
        raise ConfigError("--subsets runs PTQ searches on calibration subsets; drop --subsets or use --mode ptq")
    _check_config_flag(config, "--subnet" if args.subnet else f"--bits {args.bits}")
    spec = make_section(DQSSSpec, "--", mode=args.mode, config=config, profile=args.profile,
                        calib_images=args.calib_images, lr=args.lr, scale_lr=args.scale_lr, iters=args.iters,
                        search_epochs=args.search_epochs, finetune_epochs=args.finetune_epochs,
                        weight_lr=args.weight_lr, kd_weight=args.kd_weight, easyquant_steps=args.easyquant_steps,
                        tie=not args.no_tie, subsets=args.subsets, checkpoint=args.checkpoint, compile=args.compile)
    data_spec = make_section(DataSpec, "data", name=ckpt["dataset"], test_limit=args.test_limit)
    data = prepare_data(data_spec)
    # a config the profile cannot deploy (or a bad subnet file) fails here, before anything is written
    resolve_config(spec.target, quantized_model(ckpt, data.example(args.seed)))
    _check_calib(args.calib_images, data)
    n_calib = spec.target.calib_images
    if spec.subsets and spec.subsets * n_calib > len(data.train):
        raise ConfigError(f"--subsets x --calib-images = {spec.subsets} x {n_calib} images but the train "
                          f"split of {data.bundle.name} holds only {len(data.train)}; lower one of them")
    tracker = JobTracker(JobSpec(name="dqss", seed=args.seed, device=args.device or "auto", output_dir=str(out),
                                 data=data_spec, dqss=spec))
    with tracker.parent(tags={"stage": "dqss", "mode": spec.mode, "config": config, "subsets": str(spec.subsets)}):
        if spec.subsets:
            from quantsearch.distributed.tune_dqss import dqss_over_subsets

            sub = dqss_over_subsets(args.checkpoint, data_spec, spec, out, args.seed, args.address, device=dev)
            log_dqss_subsets(tracker, sub)
        else:
            res = run_dqss(spec, args.checkpoint, data, out, args.seed, progress=not args.quiet, device=dev)
            log_dqss_run(tracker, res)
    if spec.subsets:
        for t in sub.trials:
            print(f"  subset {t['index']}: val {100 * t['val_acc']:.2f}%  test {100 * t['test_acc']:.2f}%")
        for name, (a, w) in sub.combined.items():
            ag = sub.agreement[name]
            print(f"  {name:28s} activations {a:10s} ({100 * ag['activation']:.0f}% agree)  "
                  f"weights {w:10s} ({100 * ag['weight']:.0f}% agree)")
        print(f"combined strategy {config}: val {100 * sub.combined_val_acc:.2f}%  "
              f"test {100 * sub.combined_test_acc:.2f}% -> {sub.summary_path}, {sub.heatmap}; MLflow {tracker.uri}")
        return 0
    for name, (a, w) in res.choices.items():
        print(f"  {name:28s} activations {a:10s} weights {w}")
    extra = f", fine-tune {res.finetune_seconds:.0f}s" if spec.mode == "qat" else ""
    print(f"DQSS-{spec.mode.upper()} {config}: val {100 * res.val_acc:.2f}%  test {100 * res.test_acc:.2f}%  "
          f"(search {res.search_seconds:.0f}s{extra}) -> {res.strategy_path}; MLflow {tracker.uri}")
    return 0


def cmd_supernet_train(args: argparse.Namespace) -> int:
    """Train the EQ-Net supernet (FP32 first if its checkpoint is missing), locally or on Ray Train."""
    from quantsearch.config import SupernetSpec, load_job
    from quantsearch.pipeline import run_job

    spec = load_job(args.job, args.set or [])
    if args.device:
        spec = _override(spec, **{"": {"device": args.device}})  # type: ignore[assignment]
    if spec.supernet is None:
        spec = spec.model_copy(update={"supernet": SupernetSpec()})
    if args.compile is not None:
        spec = _override(spec, supernet={"compile": args.compile})  # type: ignore[assignment]
    workers = 0 if args.local else args.workers
    run_job(spec, progress=not args.quiet, stages=["fp32", "supernet"], workers=workers,
            use_gpu=True if args.gpu else None, address=args.address)
    return 0


def _search_spec(args: argparse.Namespace) -> object:
    """The job spec with the search-half flags applied (given flags override the spec; sections default)."""
    from quantsearch.config import load_job

    spec = load_job(args.job, args.set or [])
    if getattr(args, "device", None):
        spec = _override(spec, **{"": {"device": args.device}})  # type: ignore[assignment]
    return spec


def cmd_sample(args: argparse.Namespace) -> int:
    """Sample and measure subnets of the job's trained supernet (the measured table CQAP is fitted on)."""
    from quantsearch.pipeline import run_job

    spec = _override(_search_spec(args), sample={"subnets": args.subnets, "workers": args.workers,
                                                 "chunk": args.chunk, "checkpoint": args.checkpoint})
    run_job(spec, progress=not args.quiet, stages=["sample"], workers=args.workers,  # type: ignore[arg-type]
            address=args.address)
    return 0


def cmd_predictor_fit(args: argparse.Namespace) -> int:
    """Fit CQAP on the measured table: the job's sample folder, or an MLflow sampling run's artifacts."""
    from quantsearch.pipeline import run_job

    spec = _override(_search_spec(args), predictor={"model": args.model, "epochs": args.epochs})
    if args.tracking_uri:
        spec = _override(spec, **{"": {"tracking_uri": args.tracking_uri}})
    run_job(spec, progress=not args.quiet, stages=["predictor"], from_run=args.from_run)  # type: ignore[arg-type]
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """NSGA-II mixed-precision search under a budget; finalists measured for real (val, then test once)."""
    from quantsearch.pipeline import run_job

    budget = {"bitops": args.budget_bitops, "weight_bytes": args.budget_bytes, "avg_bits": args.budget_avg_bits}
    values: dict[str, object] = {"profile": args.profile, "fitness": args.fitness, "population": args.population,
                                 "generations": args.generations, "finalists": args.finalists}
    spec = _search_spec(args)
    if any(v is not None for v in budget.values()):  # flags replace the spec's whole budget
        values["budget"] = {k: v for k, v in budget.items() if v is not None}
    spec = _override(spec, search=values)
    if args.dqss:
        spec = _override(spec, search={"dqss": True})
    run_job(spec, progress=not args.quiet, stages=["search"], workers=args.workers,  # type: ignore[arg-type]
            address=args.address)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """ONNX QDQ export of a quantized result, checked in onnxruntime on the test split, registered in MLflow."""
    if args.job:
        from quantsearch.pipeline import run_job

        spec = _job_from_args(args)
        if getattr(spec, "export", None) is None:
            spec = _override(spec, export={"source": "auto"})
        spec = _override(spec, export={"profile": args.profile, "opset": args.opset, "check_images": args.check_images,
                                       "calib_images": args.calib_images, "registry_name": args.register})
        run_job(spec, progress=not args.quiet, stages=["export"])  # type: ignore[arg-type]
        return 0
    from quantsearch.config import DataSpec, ExportSpec, JobSpec, make_section
    from quantsearch.data import prepare_data
    from quantsearch.export.job import export_model, load_source, result_path
    from quantsearch.tracking import JobTracker
    from quantsearch.tracking.export_tracking import log_export
    from quantsearch.train import load_checkpoint

    if args.out is None or not (args.checkpoint or args.strategy):
        raise ConfigError("export needs --out model.onnx and --checkpoint C (with --subnet for a supernet) or "
                          "--strategy S; or --job JOB.yaml to export a job's result")
    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"--out {out} must name an .onnx file (the card and export.json are written beside it)")
    _out_dir(str(out.parent))
    if args.profile is not None:
        from quantsearch.quant import get_profile

        get_profile(args.profile)
    if args.strategy:
        from quantsearch.dqss import Strategy, strategy_weights

        weights = args.checkpoint or strategy_weights(args.strategy, Strategy.load(args.strategy))
    else:
        weights = args.checkpoint
    dataset = load_checkpoint(weights)["dataset"]
    data_spec = make_section(DataSpec, "data", name=args.data or dataset, root=args.root)
    data = prepare_data(data_spec)
    ex = make_section(ExportSpec, "--", profile=args.profile, opset=args.opset, check_images=args.check_images,
                      calib_images=args.calib_images, registry_name=args.register)
    # everything the export reads is loaded and checked before MLflow or the output folder sees anything
    source = load_source(args.checkpoint, subnet=args.subnet, strategy=args.strategy, data=data,
                         bn_images=args.bn_images, seed=args.seed)
    from quantsearch.export.deployable import check_profile
    from quantsearch.export.specs import layer_exports

    check_profile(layer_exports(source.model), ex.profile)  # a form the profile cannot run: before MLflow or files
    register = ex.registry_name or out.stem
    tracker = JobTracker(JobSpec(name="export", seed=args.seed, output_dir=str(out.parent),
                                 tracking_uri=args.tracking_uri, data=data_spec, export=ex))
    with tracker.parent(tags={"stage": "export", "source": source.label}):
        res = export_model(source, data, out, profile=ex.profile, opset=ex.opset, check_images=ex.check_images,
                           top1_tol=ex.top1_tol, logit_tol=ex.logit_tol, seed=args.seed, calib_images=ex.calib_images,
                           provenance={"command": " ".join(["quantsearch", *sys.argv[1:]]),
                                       "mlflow": {"tracking_uri": tracker.uri, "run_id": tracker.run_id}})
        version = log_export(tracker, res, register)
    top = "-" if res.ort_top1 is None else f"{res.ort_top1:.2f}%"
    ref = "-" if res.torch_top1 is None else f"{res.torch_top1:.2f}%"
    print(f"{source.label}\n  -> {res.path} ({res.n_qdq} QuantizeLinear/DequantizeLinear, opset {res.opset}); card "
          f"{res.card_md}; {result_path(res.path)}")
    print(f"  onnxruntime top-1 {top} vs PyTorch {ref} on {res.samples} test images; max |logit diff| "
          f"{res.max_abs_logit_diff:.2e}; integer kernels {res.integer_kernels}, float {res.float_kernels}")
    print(f"  MLflow {tracker.uri}: registered model '{register}' version {version or '-'}")
    return 0


def _absolute_paths(spec: object) -> dict[str, object]:
    """The spec as submitted: what it set (JSON), with a relative output_dir and scaling.storage_path resolved here,
    as `quantsearch run` here would (right for a local cluster or a shared volume at the same path)."""
    raw: dict[str, object] = spec.model_dump(mode="json", exclude_unset=True)  # type: ignore[attr-defined]
    raw["output_dir"] = str(Path(spec.output_dir).absolute())  # type: ignore[attr-defined]
    storage = spec.scaling.storage_path  # type: ignore[attr-defined]
    if storage and "://" not in storage and not Path(storage).is_absolute():
        scaling = dict(raw.get("scaling") or {})  # type: ignore[call-overload]
        scaling["storage_path"] = str(Path(storage).absolute())
        raw["scaling"] = scaling
    return raw


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit `quantsearch run JOB.yaml` to a Ray cluster through its Jobs API; print the submission id."""
    import os

    from quantsearch.config import load_job
    from quantsearch.distributed.jobs import follow, parse_env, resolve_address, submit

    spec = load_job(args.job, args.set or [])  # a bad spec fails here, before anything reaches the cluster
    if args.tracking_uri:
        spec = _override(spec, **{"": {"tracking_uri": args.tracking_uri}})  # type: ignore[assignment]
    env = parse_env(args.env)
    if os.environ.get("MLFLOW_TRACKING_URI") and "MLFLOW_TRACKING_URI" not in env:
        env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    raw = _absolute_paths(spec)
    address = resolve_address(args.address)
    # a cuda driver (FP32, QAT, DQSS run in it) needs a GPU: Ray places it on a GPU worker, not the head
    gpus = 1 if str(spec.device).startswith("cuda") else None
    sid = submit(raw, address, env, args.submission_id, python=args.python, entrypoint_num_gpus=gpus)
    uri = spec.tracking_uri or env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{raw['output_dir']}/mlflow.db"
    print(sid)
    sys.stderr.write(f"submitted '{spec.name}' to {address} as {sid}: output {raw['output_dir']}, MLflow {uri}\n"
                     f"  quantsearch jobs logs {sid} --follow --address {address}\n")
    if not args.follow:
        return 0
    info = follow(sid, lambda text: (sys.stdout.write(text), sys.stdout.flush()), address)
    return _final(info)


def _final(info: object) -> int:
    """One line on the job's end; 0 when it succeeded, 1 otherwise."""
    status, sid = info.status, info.submission_id or info.job_id  # type: ignore[attr-defined]
    secs = info.seconds  # type: ignore[attr-defined]
    took = "" if secs is None else f" after {secs:.0f}s"
    if status == "SUCCEEDED":
        sys.stderr.write(f"job {sid} SUCCEEDED{took}\n")
        return 0
    sys.stderr.write(f"quantsearch: job {sid} {status}{took}: {info.message}\n")  # type: ignore[attr-defined]
    return 1


def cmd_jobs_list(args: argparse.Namespace) -> int:
    """The cluster's jobs: id, status, wall time, what ran."""
    from rich.console import Console
    from rich.table import Table

    from quantsearch.distributed.jobs import list_jobs, resolve_address

    rows = list_jobs(args.address)
    table = Table(title=f"Ray jobs at {resolve_address(args.address)}")
    for col in ("submission id", "status", "seconds", "job", "entrypoint", "message"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.submission_id or r.job_id, r.status, "-" if r.seconds is None else f"{r.seconds:.0f}",
                      r.metadata.get("quantsearch.job", "-"), r.entrypoint, r.message)
    Console().print(table)
    return 0


def cmd_jobs_status(args: argparse.Namespace) -> int:
    """One job's status line."""
    from quantsearch.distributed.jobs import job_info, wait

    info = wait(args.id, args.address) if args.wait else job_info(args.id, args.address)
    secs = "" if info.seconds is None else f" ({info.seconds:.0f}s)"
    print(f"{args.id} {info.status}{secs}: {info.message}")
    return _final(info) if args.wait else 0


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    """A job's logs so far, or followed until it ends."""
    from quantsearch.distributed.jobs import follow, job_logs

    if args.follow:
        return _final(follow(args.id, lambda text: (sys.stdout.write(text), sys.stdout.flush()), args.address))
    sys.stdout.write(job_logs(args.id, args.address))
    return 0


def cmd_jobs_stop(args: argparse.Namespace) -> int:
    """Ask the cluster to stop a job (its driver and every worker it started)."""
    from quantsearch.distributed.jobs import job_info, stop, wait

    if not stop(args.id, args.address):
        info = job_info(args.id, args.address)
        print(f"{args.id} was not running ({info.status})")
        return 0
    if args.wait:
        info = wait(args.id, args.address, timeout_s=120)
        print(f"{args.id} {info.status}")
        return 0
    print(f"stop requested for {args.id}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Jobs side by side from MLflow (one row per job run) and their Pareto fronts in one plot."""
    import os

    from rich.console import Console

    from quantsearch.tracking.compare import compare_table, fronts, fronts_png, job_summaries

    experiments = args.experiment
    uri = args.tracking_uri
    if args.job:
        from quantsearch.config import load_job
        from quantsearch.tracking import resolve_uri

        spec = load_job(args.job, [])
        uri = uri or resolve_uri(spec)
        experiments = experiments or [spec.name]
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError("compare needs a store: --tracking-uri URI, MLFLOW_TRACKING_URI, or --job JOB.yaml (its "
                          "store, default sqlite:///<output_dir>/mlflow.db)")
    if args.plot and Path(args.plot).suffix.lower() != ".png":
        raise ConfigError(f"--plot {args.plot} must name a .png file")
    if args.plot:
        _out_dir(str(Path(args.plot).absolute().parent))
    metrics = args.metric or []
    jobs = job_summaries(uri, experiments, metrics)
    console = Console(width=None if sys.stdout.isatty() else 250)  # logs and files: the table unwrapped
    if not jobs:
        console.print(f"no job runs in {uri}" + (f" (experiments {', '.join(experiments)})" if experiments else ""))
    else:
        console.print(compare_table(jobs, metrics))
    if args.json:
        from quantsearch._util import atomic_write_json

        atomic_write_json(args.json, [j.to_dict() for j in jobs])
    if args.plot:
        items = fronts(uri, jobs)
        out = fronts_png(items, args.plot)
        console.print(f"{len(items)} front(s) -> {out}")
    return 0


def cmd_log_run(args: argparse.Namespace) -> int:
    """Re-log a finished run folder to MLflow (a parent run, a child run per stage) from its files on disk."""
    from quantsearch.tracking.log_run import log_run

    res = log_run(args.dir, args.tracking_uri, job=args.job)
    print(f"{args.dir}: logged as MLflow run {res.run_id} in experiment '{res.experiment}' at {res.uri} "
          f"(stages: {', '.join(res.stages) or '-'}; {res.artifacts} files)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = _Parser(prog="quantsearch", description="Find how to quantize a CNN for a target, and prove it on real data.")
    p.add_argument("--version", action="version", version=f"quantsearch {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def device_opt(sp: argparse.ArgumentParser, spec_based: bool = False) -> None:
        sp.add_argument("--device", default=None, metavar="cpu|cuda|cuda:N|auto",
                        help="where models run: cpu, cuda, cuda:N or auto (cuda when present); "
                             + ("overrides the spec's device (default auto)" if spec_based else "default auto"))

    def compile_opt(sp: argparse.ArgumentParser, key: str) -> None:
        sp.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help=f"torch.compile the training step (sets {key}; default auto: on for CUDA, off on CPU)")

    def job_opts(sp: argparse.ArgumentParser, positional: bool = False) -> None:
        if positional:
            sp.add_argument("job", help="YAML job spec")
        else:
            sp.add_argument("--job", help="YAML job spec to start from")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a spec field, e.g. training.epochs=2")

    models = sub.add_parser("models", help="model registry").add_subparsers(dest="action", required=True,
                                                                              parser_class=_Parser)
    ml = models.add_parser("list", help="list creatable models")
    ml.add_argument("--reference-only", action="store_true", help="omit torchvision models")
    ml.set_defaults(func=cmd_models_list)

    profiles = sub.add_parser("profiles", help="backend profiles").add_subparsers(dest="action", required=True,
                                                                                  parser_class=_Parser)
    profiles.add_parser("list", help="list backend profiles").set_defaults(func=cmd_profiles_list)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="action", required=True, parser_class=_Parser)
    di = data.add_parser("info", help="show a dataset's size and split")
    di.add_argument("--job", default=None, help="show the data section of this job spec (flags override it)")
    di.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of --job's spec")
    di.add_argument("--data", default=None, help="dataset name (default fashion-mnist)")
    di.add_argument("--root", default=None, help="data.root (imagefolder tree, cifar10 folder, IDX folder)")
    di.add_argument("--val-size", type=int, default=None)
    di.add_argument("--image-size", type=int, default=None, help="imagefolder: resize to this square size")
    di.add_argument("--stream", choices=("auto", "true", "false"), default=None, help="imagefolder: stream files")
    di.set_defaults(func=cmd_data_info)

    tr = sub.add_parser("train", help="train an FP32 model")
    tr.add_argument("--model", default=None)
    tr.add_argument("--data", default=None)
    tr.add_argument("--epochs", type=int, default=None)
    tr.add_argument("--lr", type=float, default=None)
    tr.add_argument("--batch-size", type=int, default=None)
    tr.add_argument("--train-limit", type=int, default=None, help="train on only this many images")
    tr.add_argument("--seed", type=int, default=None)
    tr.add_argument("--out", required=True, help="output folder (model.pt, metrics.json)")
    tr.add_argument("--no-resume", action="store_true", help="start over even if OUT/model.pt exists")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    device_opt(tr, spec_based=True)
    job_opts(tr)
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint (FP32 or quantized)")
    ev.add_argument("--checkpoint", default=None, help="model checkpoint (with --strategy: the weights to use)")
    ev.add_argument("--strategy", default=None, help="a DQSS strategy.json: rebuild its model and evaluate it")
    ev.add_argument("--data", default=None, help="default: the checkpoint's dataset")
    ev.add_argument("--root", default=None)
    ev.add_argument("--split", choices=["test", "val"], default="test")
    ev.add_argument("--limit", type=int, default=None, help="evaluate on only this many test images")
    device_opt(ev)
    ev.set_defaults(func=cmd_eval)

    va = sub.add_parser("validate", help="validate a job spec")
    job_opts(va, positional=True)
    va.set_defaults(func=cmd_validate)

    rn = sub.add_parser("run", help="run a job spec end to end (rerun: skips stages that are up to date)")
    job_opts(rn, positional=True)
    rn.add_argument("--quiet", action="store_true")
    pick = rn.add_mutually_exclusive_group()
    pick.add_argument("--only", metavar="STAGE", help="run only this stage (even if up to date)")
    pick.add_argument("--from", dest="from_stage", metavar="STAGE",
                      help="run this stage and the ones after it (even if up to date)")
    rn.add_argument("--force", action="store_true", help="rerun every stage, also those that are up to date")
    device_opt(rn, spec_based=True)
    rn.set_defaults(func=cmd_run)

    qa = sub.add_parser("qat", help="LSQ quantization-aware training of one fixed config (baseline)")
    qa.add_argument("--config", required=True, help="uniform:W4A4, or a subnet JSON file")
    qa.add_argument("--checkpoint", required=True, help="FP32 checkpoint from `quantsearch train`")
    qa.add_argument("--out", required=True)
    qa.add_argument("--epochs", type=int, default=None)
    qa.add_argument("--lr", type=float, default=None)
    qa.add_argument("--profile", default=None, help="backend profile (default generic)")
    qa.add_argument("--calib-images", type=int, default=None)
    qa.add_argument("--train-limit", type=int, default=None)
    qa.add_argument("--seed", type=int, default=None)
    qa.add_argument("--quiet", action="store_true")
    compile_opt(qa, "qat.compile")
    device_opt(qa, spec_based=True)
    job_opts(qa)
    qa.set_defaults(func=cmd_qat)
    ca = sub.add_parser("calibrate", help="PTQ: calibrate one uniform config with a named method (no training)")
    ca.add_argument("--checkpoint", required=True, help="FP32 checkpoint")
    ca.add_argument("--method", required=True, help=f"{' | '.join(METHOD_NAMES)} (activations, and weights unless "
                                                    "--weight-method)")
    ca.add_argument("--weight-method", default=None, help="method for weights (default: --method)")
    ca.add_argument("--bits", type=int, default=8, help="uniform W<b>A<b> (first/last layer stay 8-bit)")
    ca.add_argument("--config", default=None, help="uniform:W4A8 etc., or a subnet JSON (overrides --bits)")
    ca.add_argument("--profile", default=None, help="backend profile (default generic)")
    ca.add_argument("--act-symmetric", action="store_true", help="symmetric activations (default affine)")
    ca.add_argument("--calib-images", type=int, default=None,
                    help="calibration images from the train split (default 1024, or all it holds if fewer)")
    ca.add_argument("--test-limit", type=int, default=None)
    ca.add_argument("--seed", type=int, default=0)
    ca.add_argument("--out", required=True)
    device_opt(ca)
    ca.set_defaults(func=cmd_calibrate)

    from quantsearch.config import DQSSSpec, QuantTarget

    dd = {k: f.default for k, f in DQSSSpec.model_fields.items()}  # one source of defaults: the job spec's
    dt = {k: f.default for k, f in QuantTarget.model_fields.items()}
    dq = sub.add_parser("dqss", help="DQSS: differentiable per-layer choice of calibration algorithm")
    dq.add_argument("--checkpoint", required=True, help="FP32 checkpoint")
    dq.add_argument("--mode", choices=["ptq", "qat"], default="ptq",
                    help="ptq: only alpha/beta learn on calibration images; qat: weights, scales and alpha/beta "
                         "learn together on the training set, then the argmax strategy is fine-tuned")
    bits = dq.add_mutually_exclusive_group(required=True)
    bits.add_argument("--bits", type=int, help="uniform W<b>A<b> (first/last layer stay 8-bit)")
    bits.add_argument("--subnet", help="a SubnetConfig JSON (e.g. a searched subnet's per-layer bits)")
    dq.add_argument("--profile", default=dt["profile"])
    dq.add_argument("--iters", type=int, default=dd["iters"], help="PTQ search steps")
    dq.add_argument("--lr", type=float, default=None, help="learning rate of alpha/beta (default 0.05 PTQ, 0.01 QAT)")
    dq.add_argument("--search-epochs", type=float, default=dd["search_epochs"],
                    help="QAT: epochs of the joint search")
    dq.add_argument("--finetune-epochs", type=float, default=dd["finetune_epochs"],
                    help="QAT: epochs fine-tuning the argmax strategy")
    dq.add_argument("--weight-lr", type=float, default=dd["weight_lr"],
                    help="QAT: learning rate of the network weights")
    dq.add_argument("--scale-lr", type=float, default=None,
                    help="learning rate of the candidate scales (default: QAT 1e-3; PTQ 0 = scales frozen)")
    dq.add_argument("--kd-weight", type=float, default=dd["kd_weight"],
                    help="QAT: weight of the KL-to-FP32 term next to CE")
    dq.add_argument("--no-tie", action="store_true", help="one alpha per layer even where layers share an input")
    dq.add_argument("--quiet", action="store_true", help="no progress bars")
    dq.add_argument("--calib-images", type=int, default=None,
                    help=f"calibration images from the train split (default {dt['calib_images']}, or all it holds "
                         "if fewer)")
    dq.add_argument("--test-limit", type=int, default=None)
    dq.add_argument("--seed", type=int, default=0)
    dq.add_argument("--easyquant-steps", type=int, default=dd["easyquant_steps"],
                    help="EasyQuant grid points per search")
    dq.add_argument("--subsets", type=int, default=dd["subsets"],
                    help="K > 0: K Ray Tune trials on K disjoint calibration subsets, their agreement and a "
                         "combined strategy")
    dq.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    dq.add_argument("--out", required=True, help="folder for strategy.json, model.pt, metrics.json")
    compile_opt(dq, "dqss.compile; QAT mode only")
    device_opt(dq)
    dq.set_defaults(func=cmd_dqss)

    sn = sub.add_parser("supernet", help="EQ-Net elastic supernet").add_subparsers(dest="action", required=True,
                                                                                   parser_class=_Parser)
    st = sn.add_parser("train", help="train the supernet (sandwich + WDR + GPG), print the uniform table")
    job_opts(st, positional=True)
    st.add_argument("--workers", type=int, default=None, help="Ray Train workers (0: in-process, no Ray)")
    st.add_argument("--local", action="store_true", help="same as --workers 0")
    st.add_argument("--gpu", action="store_true", help="one GPU per worker")
    st.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    st.add_argument("--quiet", action="store_true")
    device_opt(st, spec_based=True)
    compile_opt(st, "supernet.compile")
    st.set_defaults(func=cmd_supernet_train)

    def tune_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--workers", type=int, default=None,
                        help="parallel Ray Tune trials measuring subnets (0: in-process; default sample.workers)")
        sp.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
        sp.add_argument("--quiet", action="store_true")

    sa = sub.add_parser("sample", help="sample and measure subnets of the job's trained supernet (for CQAP)")
    job_opts(sa, positional=True)
    sa.add_argument("--subnets", type=int, default=None, help="subnets to measure (default sample.subnets, 300)")
    sa.add_argument("--chunk", type=int, default=None, help="subnets per Tune trial")
    sa.add_argument("--checkpoint", default=None, help="supernet checkpoint (default <output_dir>/supernet)")
    tune_opts(sa)
    device_opt(sa, spec_based=True)
    sa.set_defaults(func=cmd_sample)

    pr = sub.add_parser("predictor", help="CQAP accuracy predictor").add_subparsers(dest="action", required=True,
                                                                                    parser_class=_Parser)
    pf = pr.add_parser("fit", help="fit CQAP on measured subnets; print held-out Kendall/Spearman/RMSE")
    job_opts(pf, positional=True)
    pf.add_argument("--from-run", default=None, metavar="RUN_ID",
                    help="read the measured table from this MLflow sampling run (its sample/ artifacts)")
    pf.add_argument("--tracking-uri", default=None, help="MLflow URI of --from-run (default: the job's)")
    pf.add_argument("--model", choices=["mlp", "gbr"], default=None, help="mlp (CQAP, default) or gbr")
    pf.add_argument("--epochs", type=int, default=None, help="MLP epochs")
    pf.add_argument("--quiet", action="store_true")
    pf.set_defaults(func=cmd_predictor_fit)

    se = sub.add_parser("search", help="NSGA-II mixed-precision search under a budget, finalists measured")
    job_opts(se, positional=True)
    se.add_argument("--budget-bitops", default=None, metavar="X|WbAb",
                    help="at most X BitOps, or those of a uniform config (e.g. W3A3)")
    se.add_argument("--budget-bytes", default=None, metavar="N|WbAb", help="at most N bytes of weights")
    se.add_argument("--budget-avg-bits", type=float, default=None, metavar="B",
                    help="at most B mean per-layer (w+a)/2 bits")
    se.add_argument("--profile", default=None, help="backend profile searched (within the supernet's)")
    se.add_argument("--fitness", choices=["predictor", "measured"], default=None,
                    help="predictor: CQAP (default); measured: every new individual measured on the supernet")
    se.add_argument("--population", type=int, default=None)
    se.add_argument("--generations", type=int, default=None)
    se.add_argument("--finalists", type=int, default=None, help="front members measured for real")
    se.add_argument("--dqss", action="store_true", help="then DQSS on the best subnet's bits (needs a dqss section)")
    tune_opts(se)
    device_opt(se, spec_based=True)
    se.set_defaults(func=cmd_search)

    ex = sub.add_parser("export", help="ONNX QDQ export (2..8 bits) checked in onnxruntime, model card, MLflow model")
    ex.add_argument("--checkpoint", default=None,
                    help="a QAT/PTQ/DQSS model.pt, a supernet.pt (with --subnet), or the weights for --strategy")
    ex.add_argument("--subnet", default=None, help="with a supernet: a SubnetConfig JSON (search's best.json) or W4A4")
    ex.add_argument("--strategy", default=None, help="a DQSS strategy.json (its weights unless --checkpoint)")
    ex.add_argument("--job", default=None, help="export a job's result instead (its export section, or source auto)")
    ex.add_argument("--set", action="append", metavar="KEY=VALUE", help="with --job: override a spec field")
    ex.add_argument("--out", default=None, help="model.onnx to write (card and export.json beside it)")
    ex.add_argument("--profile", default=None, help="backend profile the graph must run on (refuses other forms)")
    ex.add_argument("--opset", type=int, default=None, help="ONNX opset (default 21: INT4/UINT4 for 2..4 bits)")
    ex.add_argument("--check-images", type=int, default=None, help="test images checked (default: all)")
    ex.add_argument("--calib-images", type=int, default=None,
                    help="training images calibrating the output points of W8A8 layers (default 1024; 0: none)")
    ex.add_argument("--data", default=None, help="dataset (default: the checkpoint's)")
    ex.add_argument("--root", default=None, help="dataset root")
    ex.add_argument("--bn-images", type=int, default=512, help="supernet subnets: BN recalibration images")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--register", default=None, help="MLflow registered model name (default: the file's stem)")
    ex.add_argument("--tracking-uri", default=None, help="MLflow URI (default sqlite:///<out folder>/mlflow.db)")
    ex.add_argument("--quiet", action="store_true")
    ex.set_defaults(func=cmd_export)
    sb = sub.add_parser("submit", help="submit `quantsearch run JOB.yaml` to a Ray cluster (Ray Jobs API)")
    job_opts(sb, positional=True)
    sb.add_argument("--address", default=None, metavar="http://HEAD:8265",
                    help="the cluster's Jobs API (dashboard) address (default: RAY_JOBS_ADDRESS, an http RAY_ADDRESS, "
                         "or http://127.0.0.1:8265)")
    sb.add_argument("--follow", action="store_true", help="stream the job's logs until it ends; exit 1 unless it "
                                                         "succeeded")
    sb.add_argument("--submission-id", default=None, help="the job's id (default: Ray picks raysubmit_...)")
    sb.add_argument("--env", action="append", metavar="KEY=VALUE", help="an env var for the job (repeatable); "
                                                                       "MLFLOW_TRACKING_URI travels when set here")
    sb.add_argument("--tracking-uri", default=None, help="the job's MLflow store (sets the spec's tracking_uri)")
    sb.add_argument("--python", default="python",
                    help="the cluster's Python with quantsearch installed (default: python on the cluster's PATH)")
    sb.set_defaults(func=cmd_submit)

    jobs = sub.add_parser("jobs", help="Ray jobs on a cluster: list, status, logs, stop").add_subparsers(
        dest="action", required=True, parser_class=_Parser)

    def address_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--address", default=None, metavar="http://HEAD:8265",
                        help="the cluster's Jobs API address (default as for submit)")

    jl = jobs.add_parser("list", help="every job the cluster knows")
    address_opt(jl)
    jl.set_defaults(func=cmd_jobs_list)
    until_end = "until the job ends; exit 1 unless it succeeded"
    for name, what, func, flag, flag_help in (
            ("status", "one job's status", cmd_jobs_status, "--wait", f"wait {until_end}"),
            ("logs", "a job's logs", cmd_jobs_logs, "--follow", f"stream {until_end}"),
            ("stop", "stop a job", cmd_jobs_stop, "--wait", "wait (up to 2 min) until it has stopped")):
        one = jobs.add_parser(name, help=what)
        one.add_argument("id", help="submission id")
        one.add_argument(flag, action="store_true", help=flag_help)
        address_opt(one)
        one.set_defaults(func=func)

    cp = sub.add_parser("compare", help="jobs side by side from MLflow, and their Pareto fronts in one plot")
    cp.add_argument("--experiment", action="append", metavar="NAME",
                    help="an MLflow experiment (= a job's name; repeatable; default: every one)")
    cp.add_argument("--metric", action="append", metavar="STAGE.KEY",
                    help="an extra column: a stage run's metric (e.g. fp32.test_acc, predictor.heldout.tau) or a "
                         "parent run's (repeatable)")
    cp.add_argument("--plot", default=None, metavar="OUT.png", help="overlay the jobs' Pareto fronts in a PNG")
    cp.add_argument("--json", default=None, metavar="OUT.json", help="also write the rows as JSON")
    cp.add_argument("--tracking-uri", default=None, help="MLflow store (default: MLFLOW_TRACKING_URI, or --job's)")
    cp.add_argument("--job", default=None, help="a job spec: its store and (unless --experiment) its experiment")
    cp.set_defaults(func=cmd_compare)
    lr = sub.add_parser("log-run", help="re-log a finished run folder to MLflow (e.g. after the server was down)")
    lr.add_argument("dir", help="the run's output folder (holds results.json)")
    lr.add_argument("--tracking-uri", default=None,
                    help="MLflow store (default: the run's job spec's, MLFLOW_TRACKING_URI, or sqlite:///DIR/mlflow.db)")
    lr.add_argument("--job", default=None, help="the run's job spec, where DIR has no job.json")
    lr.set_defaults(func=cmd_log_run)

    from quantsearch.k8s_pipeline import cmd_pipeline

    k8s = sub.add_parser("k8s", help="Kubernetes: the Kubeflow pipeline (k8s/)").add_subparsers(
        dest="action", required=True, parser_class=_Parser)
    kp = k8s.add_parser("pipeline", help="compile k8s/kubeflow/pipeline.py (kfp v2): one step per stage of a spec")
    kp.add_argument("--out", required=True, metavar="PIPELINE.yaml", help="the compiled pipeline")
    kp.add_argument("--job", default=None, help="a spec in jobs/ (the pods read /jobs/<name>; default jobs/demo.yaml)")
    kp.add_argument("--set", action="append", metavar="KEY=VALUE", help="an override every step adds (repeatable)")
    kp.add_argument("--image", default=None, help="a pinned image (default: the gpu overlay's, "
                                                  "ghcr.io/quantsearch/quantsearch:0.1.0-cuda12.8)")
    kp.add_argument("--run-name", default=None, help="run folder /data/runs/<name> and Ray run name "
                                                     "(default kfp-<spec name>)")
    kp.set_defaults(func=cmd_pipeline)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; user errors print one line and return 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    tune_host_allocator()
    try:
        return int(args.func(args))
    except QuantsearchError as exc:
        sys.stderr.write(f"quantsearch: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("quantsearch: interrupted\n")
        return 130
    except Exception as exc:  # a write outside the atomic helpers (a library's own file) on a full/read-only disk
        import errno

        from quantsearch._util import disk_error, output_error

        err = disk_error(exc)
        if err is None or err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):  # EACCES may be a read
            raise
        out = output_error(None, err)
        sys.stderr.write(f"quantsearch: error: {out}\n")
        return out.exit_code


__all__ = ["ConfigError", "build_parser", "main"]
