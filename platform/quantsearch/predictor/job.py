"""The CQAP stage as a job: a sample folder in, a fitted predictor folder, report, scatter plot and space out.

What `fit_predictor_job` writes into its folder (report.json last, so a folder with it is complete):
    space.json     the search space the predictor encodes (SearchSpace.to_dict())
    scatter.png    held-out measured vs predicted accuracy of the split model
    predictor/     Predictor.save: the predictor the search loads. By default it is REFIT ON ALL ROWS with the
                   same settings and seed (the search should use every measured subnet); it then has no held-out
                   score of its own, and the split model's scores are the estimate of its quality.
                   With refit=False it is the split model itself.
    report.json    settings, row counts, the split model's held-out report (PredictorReport.to_dict()), what was
                   saved and how it was trained, flat metrics, and the other models' reports when compared
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quantsearch._util import atomic_write_bytes, atomic_write_json
from quantsearch.config import PredictorSpec
from quantsearch.data.tables import read_rows
from quantsearch.errors import ConfigError
from quantsearch.predictor.dataset import MeasuredSet, measured_set
from quantsearch.predictor.fit import FitResult, fit_predictor
from quantsearch.predictor.metrics import PredictorReport
from quantsearch.predictor.model import MODELS, make_model
from quantsearch.predictor.plot import scatter_png
from quantsearch.predictor.predictor import Predictor
from quantsearch.space.encoding import FeatureEncoder
from quantsearch.space.space import SearchSpace

REPORT_FORMAT = 1
# the sample stage's folder (and its MLflow artifact path) and the files in it: the data contract
SAMPLE_ARTIFACT_PATH = "sample"
MEASURED_FILE = "measured.parquet"
SPACE_FILE = "space.json"
# what this stage writes
PREDICTOR_DIR = "predictor"
REPORT_FILE = "report.json"
SCATTER_FILE = "scatter.png"


@dataclass(frozen=True, eq=False)
class PredictorJobResult:
    """A finished predictor job: the split fit (held-out report), the saved predictor, report.json's content, paths."""

    fit: FitResult  # trained on the training split; fit.report is its held-out score
    predictor: Predictor  # what predictor/ holds: refit on all rows, or fit.predictor when refit=False
    refit: bool
    report: dict[str, Any]
    out_dir: Path
    predictor_dir: Path
    report_path: Path
    scatter_path: Path
    space_path: Path
    compare: dict[str, PredictorReport] = field(default_factory=dict)


def _resolved_seed(spec: PredictorSpec, seed: int) -> int:
    return spec.seed if spec.seed is not None else seed


def _band_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def summary_metrics(report: PredictorReport) -> dict[str, float]:
    """Flat held-out metrics of one report, the proxies' beside them (NaN where undefined)."""
    o, bands = report.overall, report.bands
    return {
        "heldout.tau": o.tau, "heldout.rho": o.rho, "heldout.rmse": o.rmse, "heldout.band_tau": report.band_tau,
        "proxy.avg_bits.tau": o.tau_avg_bits, "proxy.avg_bits.rho": o.rho_avg_bits,
        "proxy.bitops.tau": o.tau_bitops, "proxy.bitops.rho": o.rho_bitops,
        "proxy.avg_bits.band_tau": _band_mean([b.tau_avg_bits for b in bands]),
        "proxy.bitops.band_tau": _band_mean([b.tau_bitops for b in bands]),
        "n_train": float(report.n_train), "n_heldout": float(report.n_heldout), "fit_seconds": report.fit_seconds,
    }


def _json_floats(d: Mapping[str, float]) -> dict[str, float | None]:
    return {k: (v if math.isfinite(v) else None) for k, v in d.items()}


def _other_models(spec: PredictorSpec, models: Sequence[str] | None) -> list[str]:
    wanted = list(models) if models is not None else sorted(MODELS)
    unknown = [m for m in wanted if m not in MODELS]
    if unknown:
        raise ConfigError(f"unknown predictor model(s) {unknown}; choose from {sorted(MODELS)}")
    return [m for m in dict.fromkeys(wanted) if m != spec.model]


def _fit_others(rows: Any, space: SearchSpace, spec: PredictorSpec, seed: int,
                models: Sequence[str] | None) -> dict[str, PredictorReport]:
    return {m: fit_predictor(rows, spec.model_copy(update={"model": m}), space, seed).report
            for m in _other_models(spec, models)}


def compare_predictors(rows: Any, space: SearchSpace, spec: PredictorSpec, seed: int,
                       models: Sequence[str] | None = None) -> dict[str, PredictorReport]:
    """Fit each model (default: mlp and gbr) on the same split and return their held-out reports, spec.model first.

    The split depends on the subnets, spec.holdout and the seed only, so every model is scored on the same
    held-out subnets; spec.model is the one a job saves for the search.
    """
    first = fit_predictor(rows, spec, space, seed).report
    return {spec.model: first, **_fit_others(rows, space, spec, seed, models)}


def format_comparison(reports: Mapping[str, PredictorReport]) -> str:
    """A small text table of held-out tau / rho / RMSE / band tau per model, with the proxies' tau last."""
    def f(v: float, pct: bool = False) -> str:
        return "n/a" if not math.isfinite(v) else (f"{100 * v:.2f}" if pct else f"{v:.3f}")

    lines = [f"{'model':<6} {'train':>5} {'held':>5} {'tau':>6} {'rho':>6} {'rmse%':>6} {'band tau':>8}"]
    for kind, r in reports.items():
        m = summary_metrics(r)
        lines.append(f"{kind:<6} {r.n_train:>5} {r.n_heldout:>5} {f(m['heldout.tau']):>6} {f(m['heldout.rho']):>6} "
                     f"{f(m['heldout.rmse'], pct=True):>6} {f(m['heldout.band_tau']):>8}")
    if reports:
        m = summary_metrics(next(iter(reports.values())))
        lines.append(f"proxies on the same held-out subnets: avg-bits tau {f(m['proxy.avg_bits.tau'])} "
                     f"(band {f(m['proxy.avg_bits.band_tau'])}), BitOps tau {f(m['proxy.bitops.tau'])} "
                     f"(band {f(m['proxy.bitops.band_tau'])})")
    return "\n".join(lines)


def _refit_all(data: MeasuredSet, encoder: FeatureEncoder, spec: PredictorSpec, seed: int
               ) -> tuple[Predictor, float]:
    """(predictor fitted on every row, seconds)."""
    start = time.perf_counter()
    model = make_model(spec, seed).fit(data.X, data.y)
    return Predictor(encoder, model), time.perf_counter() - start


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is a file, not a folder; choose another output folder for the predictor")
    for p in out_dir.parents:
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"{p} is a file, so {out_dir} cannot be created; choose another output folder")
            break


def _save_predictor_dir(predictor: Predictor, final: Path) -> None:
    """Save into a temp folder beside `final`, then swap it in: a reader sees the old or the new predictor."""
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    old: Path | None = None
    try:
        predictor.save(tmp)
        if final.exists():
            old = final.parent / f"{tmp.name}.old"
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        if old is not None and old.exists() and not final.exists():
            os.replace(old, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fit_predictor_job(rows: Any, space: SearchSpace, spec: PredictorSpec, out_dir: str | Path, seed: int,
                      refit: bool = True, compare: bool = False) -> PredictorJobResult:
    """Fit spec.model on the measured rows (held-out report from a seeded split), save the predictor, write files.

    `rows`: a pyarrow Table or row dicts of the measured table. With `refit` (default) the saved predictor is
    refit on all rows with the same settings and seed; otherwise the split model is saved. With `compare`, the
    other models are fitted on the same split too and their reports go into report.json["compare"].
    Nothing is written (and out_dir is not created) unless the rows, space and spec are valid.
    """
    out = Path(out_dir)
    _check_out_dir(out)
    seed = _resolved_seed(spec, seed)
    fit = fit_predictor(rows, spec, space, seed)  # validates the table, the configs against the space, the split
    reports: dict[str, PredictorReport] = {spec.model: fit.report}
    if compare:
        reports.update(_fit_others(rows, space, spec, seed, None))
    data = measured_set(rows, fit.predictor.encoder)
    if refit:
        saved, saved_seconds = _refit_all(data, fit.predictor.encoder, spec, seed)
        n_saved = len(data)
    else:
        saved, n_saved, saved_seconds = fit.predictor, fit.report.n_train, fit.report.fit_seconds
    report: dict[str, Any] = {
        "format_version": REPORT_FORMAT,
        "model": spec.model,
        "seed": seed,
        "settings": spec.model_dump(mode="json") | {"seed": seed},
        "n_rows": len(data),
        "n_subnets": len(set(data.configs)),
        "space": space.to_dict(),
        # held-out scores of the model fitted on the training split only (n_train rows); scatter.png plots it
        "split_model": fit.report.to_dict(),
        "metrics": _json_floats(summary_metrics(fit.report)),
        "saved_predictor": {
            "path": PREDICTOR_DIR,
            "model": saved.kind,
            "trained_on": "all rows" if refit else "training split",
            "n_rows": n_saved,
            "fit_seconds": saved_seconds,
            "heldout_scored": not refit,
            "note": ("refit on every row (the held-out ones included) with the split model's settings and seed: "
                     "it has no held-out score; split_model's scores estimate its quality" if refit else
                     "the split model itself: split_model's scores are its held-out scores"),
        },
    }
    if compare:
        # every model fitted on the same training split and scored on the same held-out subnets
        report["compare"] = {k: r.to_dict() | {"metrics": _json_floats(summary_metrics(r))}
                             for k, r in reports.items()}
    out.mkdir(parents=True, exist_ok=True)
    space_path, scatter_path = out / SPACE_FILE, out / SCATTER_FILE
    predictor_dir, report_path = out / PREDICTOR_DIR, out / REPORT_FILE
    atomic_write_json(space_path, space.to_dict())
    atomic_write_bytes(scatter_path, scatter_png(fit))
    _save_predictor_dir(saved, predictor_dir)
    atomic_write_json(report_path, report)
    return PredictorJobResult(fit, saved, refit, report, out, predictor_dir, report_path, scatter_path, space_path,
                              reports if compare else {})


def load_sample_dir(path: str | Path) -> tuple[list[dict[str, Any]], SearchSpace]:
    """(measured rows, search space) of a sample stage's folder (measured.parquet + space.json)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"sample folder {folder} does not exist; run the sample stage first or pass its "
                          f"folder (<output_dir>/{SAMPLE_ARTIFACT_PATH})")
    missing = [name for name in (MEASURED_FILE, SPACE_FILE) if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"{folder} lacks {' and '.join(missing)}; it is not a finished sample stage's folder "
                          f"(re-run the sample stage)")
    try:
        space_dict = json.loads((folder / SPACE_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{folder / SPACE_FILE} is not readable JSON ({exc}); re-run the sample stage") from exc
    if not isinstance(space_dict, dict):
        raise ConfigError(f"{folder / SPACE_FILE} holds a {type(space_dict).__name__}, not a search space; "
                          f"re-run the sample stage")
    try:
        space = SearchSpace.from_dict(space_dict)
    except ConfigError as exc:
        raise ConfigError(f"{folder / SPACE_FILE}: {exc}; re-run the sample stage") from exc
    rows = read_rows(folder / MEASURED_FILE)
    if not rows:
        raise ConfigError(f"{folder / MEASURED_FILE} has no rows; measure subnets first (sample.subnets)")
    return rows, space
