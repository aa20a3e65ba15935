"""Jobs side by side from MLflow: one row per job (its parent run), built with `mlflow.search_runs`, and the
searched Pareto fronts overlaid in one plot; the parent run's summary (links to its stage runs and their files).

A job's parent run (JobTracker.parent) holds the flattened spec as params and `quantsearch.job` / `stages` tags;
each stage is a nested run named after it (fp32, qat, dqss, supernet, sample, predictor, search, dqss-best, export).
The search run logs `best.*` metrics and `search/front.parquet`; the export run tags `export.registered_model` and
`export.version`. Runs of one-stage commands (`quantsearch dqss`, `quantsearch export`) carry a `stage` tag and
their figures on the parent itself.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quantsearch.errors import ConfigError
from quantsearch.tracking.mlflow_tracking import TrackingError, _quiet_mlflow, check_reachable

FRONT_ARTIFACT = "search/front.parquet"
BUDGET_KEYS = (("bitops", "BitOps"), ("weight_bytes", "bytes"), ("avg_bits", "avg bits"))
# per stage, the figures the parent's summary (and its note) repeats: (metric, label, unit); unit "frac" is a
# fraction shown as %, "pct" already a percentage
KEY_METRICS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "fp32": (("test_acc", "test", "frac"),),
    "qat": (("test_acc", "test", "frac"),),
    "dqss": (("test_acc", "test", "frac"), ("combined_test_acc", "combined test", "frac")),
    "supernet": (("val_acc_max", "val max", "frac"), ("val_acc_min", "val min", "frac")),
    "sample": (("subnets", "subnets", ""), ("val_acc_mean", "val mean", "frac")),
    "predictor": (("heldout.tau", "held-out tau", ""),),
    "search": (("best.test_acc", "best test", "frac"), ("best.bitops", "best BitOps", "")),
    "dqss-best": (("test_acc", "test", "frac"),),
    "export": (("ort_top1", "onnxruntime top-1", "pct"),),
}


@dataclass(frozen=True)
class StageRun:
    """One stage's run: its id, name, wall seconds, metrics, params and tags."""

    name: str
    run_id: str
    seconds: float | None
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]


@dataclass(frozen=True)
class JobSummary:
    """One job (a parent run) as `quantsearch compare` shows it."""

    run_id: str
    run_name: str
    experiment: str
    experiment_id: str
    job: str
    model: str
    data: str
    stages: tuple[str, ...]
    status: str
    start_time: float | None
    seconds: float | None
    children: tuple[StageRun, ...]
    budget: str | None = None
    best_val_acc: float | None = None
    best_test_acc: float | None = None
    best_predicted_acc: float | None = None
    bitops: float | None = None
    weight_bytes: float | None = None
    export_model: str | None = None
    export_version: str | None = None
    extra: dict[str, float | None] = field(default_factory=dict)

    def stage(self, name: str) -> StageRun | None:
        """The (last) stage run of that name."""
        found = [c for c in self.children if c.name == name]
        return found[-1] if found else None

    def stage_seconds(self) -> dict[str, float]:
        """Wall seconds per stage run, in the order they ran."""
        return {c.name: c.seconds for c in self.children if c.seconds is not None}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (stage runs without their params)."""
        d = asdict(self)
        d["children"] = [{"name": c.name, "run_id": c.run_id, "seconds": c.seconds, "metrics": c.metrics}
                         for c in self.children]
        d["stages"] = list(self.stages)
        return d


# ----------------------------------------------------------------------------------------------- the store


@contextmanager
def _using(uri: str) -> Iterator[None]:
    """mlflow's global tracking URI set to `uri` for the block (mlflow.search_runs reads it); the previous URI and
    MLFLOW_TRACKING_URI (which mlflow.set_tracking_uri also sets) are put back after."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    saved = getattr(utils, "_tracking_uri", None)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved)  # type: ignore[arg-type]  # None: back to unset, as before
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def _client(uri: str) -> Any:
    check_reachable(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise TrackingError(f"no MLflow store at {uri[len('sqlite:///'):]}; pass --tracking-uri (or --job) of the "
                            "store the jobs logged to")
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _experiments(client: Any, names: Sequence[str] | None) -> dict[str, str]:
    """{experiment id: name} of the named experiments (every one when none are named)."""
    from mlflow.entities import ViewType

    every = {e.experiment_id: e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)}
    if not names:
        return every
    by_name = {v: k for k, v in every.items()}
    missing = [n for n in names if n not in by_name]
    if missing:
        have = ", ".join(sorted(by_name)) or "none"
        raise ConfigError(f"no MLflow experiment named '{missing[0]}' in this store (experiments: {have}); an "
                          "experiment is named after its job")
    return {by_name[n]: n for n in names}


def _clean(value: Any) -> Any:
    """pandas' missing values (None, NaN) -> None."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _seconds(start: Any, end: Any) -> float | None:
    start, end = _clean(start), _clean(end)
    if start is None or end is None:
        return None
    try:
        return float((end - start).total_seconds())
    except (AttributeError, TypeError):
        return None


def _epoch(ts: Any) -> float | None:
    ts = _clean(ts)
    try:
        return None if ts is None else float(ts.timestamp())
    except (AttributeError, TypeError, ValueError):
        return None


def _row_dicts(row: Any) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
    metrics, params, tags = {}, {}, {}
    for col, value in row.items():
        value = _clean(value)
        if value is None:
            continue
        if col.startswith("metrics."):
            metrics[col[len("metrics."):]] = float(value)
        elif col.startswith("params."):
            params[col[len("params."):]] = str(value)
        elif col.startswith("tags."):
            tags[col[len("tags."):]] = str(value)
    return metrics, params, tags


def _budget(params: dict[str, str]) -> str | None:
    parts = []
    for key, label in BUDGET_KEYS:
        value = params.get(f"search.budget.{key}")
        if value not in (None, "", "None"):
            parts.append(f"{label} <= {value}")
    return ", ".join(parts) or None


def _stage_run(row: Any) -> StageRun:
    metrics, params, tags = _row_dicts(row)
    return StageRun(name=tags.get("mlflow.runName", ""), run_id=str(row["run_id"]),
                    seconds=_seconds(row.get("start_time"), row.get("end_time")), metrics=metrics, params=params,
                    tags=tags)


def summarize(df: Any, experiments: dict[str, str], metrics: Sequence[str] = ()) -> list[JobSummary]:
    """One JobSummary per parent run in a `mlflow.search_runs` DataFrame (children: runs whose parentRunId is it),
    newest first. `metrics`: extra figures as STAGE.KEY (a stage run's metric) or KEY (the parent's)."""
    if df is None or len(df) == 0:
        return []
    parent_col = "tags.mlflow.parentRunId"
    parents = df[df[parent_col].isna()] if parent_col in df.columns else df
    children: dict[str, list[Any]] = {}
    if parent_col in df.columns:
        for _, row in df[df[parent_col].notna()].iterrows():
            children.setdefault(str(row[parent_col]), []).append(row)
    out = []
    for _, row in parents.iterrows():
        p_metrics, p_params, p_tags = _row_dicts(row)
        kids = sorted(children.get(str(row["run_id"]), []), key=lambda r: _epoch(r.get("start_time")) or 0.0)
        stage_runs = [_stage_run(r) for r in kids]
        own = p_tags.get("stage")  # a one-stage command logs on the parent itself
        if own:
            stage_runs.append(StageRun(own, str(row["run_id"]), _seconds(row.get("start_time"), row.get("end_time")),
                                       p_metrics, p_params, p_tags))
        stages = tuple(s for s in (p_tags.get("stages") or own or "").split(",") if s) \
            or tuple(s.name for s in stage_runs)
        summary = JobSummary(
            run_id=str(row["run_id"]), run_name=p_tags.get("mlflow.runName", ""),
            experiment=experiments.get(str(row["experiment_id"]), str(row["experiment_id"])),
            experiment_id=str(row["experiment_id"]), job=p_tags.get("quantsearch.job") or p_params.get("name", ""),
            model=p_params.get("model.name", ""), data=p_params.get("data.name", ""), stages=stages,
            status=str(_clean(row.get("status")) or ""), start_time=_epoch(row.get("start_time")),
            seconds=_seconds(row.get("start_time"), row.get("end_time")), children=tuple(stage_runs))
        out.append(_with_figures(summary, p_metrics, metrics))
    return sorted(out, key=lambda s: -(s.start_time or 0.0))


def _with_figures(s: JobSummary, parent_metrics: dict[str, float], wanted: Sequence[str]) -> JobSummary:
    from dataclasses import replace

    updates: dict[str, Any] = {}
    search = s.stage("search")
    if search is not None:
        m = search.metrics
        updates.update(budget=_budget(search.params), best_val_acc=m.get("best.val_acc"),
                       best_test_acc=m.get("best.test_acc"), best_predicted_acc=m.get("best.predicted_acc"),
                       bitops=m.get("best.bitops"), weight_bytes=m.get("best.weight_bytes"))
    export = s.stage("export")
    if export is not None:
        updates.update(export_model=export.tags.get("export.registered_model"),
                       export_version=export.tags.get("export.version") or None)
    extra: dict[str, float | None] = {}
    for name in wanted:
        stage, _, key = name.partition(".")
        run = s.stage(stage) if key else None
        extra[name] = run.metrics.get(key) if run is not None else parent_metrics.get(name)
    updates["extra"] = extra
    return replace(s, **updates)


def job_summaries(tracking_uri: str, experiments: Sequence[str] | None = None, metrics: Sequence[str] = (),
                  max_results: int = 10_000) -> list[JobSummary]:
    """Every job (parent run) in the named experiments (default: all) of the store at `tracking_uri`."""
    import mlflow

    client = _client(tracking_uri)
    exps = _experiments(client, experiments)
    if not exps:
        return []
    with _using(tracking_uri):
        df = mlflow.search_runs(experiment_ids=list(exps), max_results=max_results, output_format="pandas")
    return summarize(df, exps, metrics)


# ----------------------------------------------------------------------------------------------- outputs


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def compare_table(jobs: Sequence[JobSummary], metrics: Sequence[str] = ()) -> Any:
    """A rich Table: job, model, data, stages, best accuracy at each budget, BitOps, bytes, stage times, export."""
    from rich.table import Table

    budgets = sorted({j.budget for j in jobs if j.budget})
    table = Table(title=f"quantsearch compare: {len(jobs)} job run(s)")
    for col in ("experiment / run", "model", "data", "stages"):
        table.add_column(col)
    for b in budgets:
        table.add_column(f"best test % (val) @ {b}")
    for col in ("BitOps (M)", "weight KB", "stage times (s)", "exported model"):
        table.add_column(col)
    for m in metrics:
        table.add_column(m)
    for j in jobs:
        cells = [f"{j.experiment}\n{j.run_name or j.run_id[:8]}", j.model or "-", j.data or "-",
                 ",".join(j.stages) or "-"]
        for b in budgets:
            cells.append(f"{_pct(j.best_test_acc)} ({_pct(j.best_val_acc)})" if j.budget == b else "-")
        cells.append("-" if j.bitops is None else f"{j.bitops / 1e6:.1f}")
        cells.append("-" if j.weight_bytes is None else f"{j.weight_bytes / 1024:.1f}")
        times = j.stage_seconds()
        cells.append(" ".join(f"{k} {v:.0f}" for k, v in times.items()) or "-")
        cells.append(f"{j.export_model} v{j.export_version or '-'}" if j.export_model else "-")
        for m in metrics:
            v = j.extra.get(m)
            cells.append("-" if v is None else f"{v:.4g}")
        table.add_row(*cells)
    return table


def fetch_front(tracking_uri: str, search_run_id: str, dst: str | Path) -> Path | None:
    """Download a search run's front.parquet into `dst`; None when the run has none."""
    client = _client(tracking_uri)
    try:
        names = {a.path for a in client.list_artifacts(search_run_id, "search")}
    except Exception as exc:  # the server's error types vary; one line either way
        raise TrackingError(f"cannot list the artifacts of search run {search_run_id} at {tracking_uri} ({exc})"
                            ) from exc
    if FRONT_ARTIFACT not in names:
        return None
    return Path(client.download_artifacts(search_run_id, FRONT_ARTIFACT, str(dst)))


def fronts(tracking_uri: str, jobs: Sequence[JobSummary]) -> list[tuple[JobSummary, Any]]:
    """(job, front DataFrame) for every job whose search run logged a front."""
    import pandas as pd

    out = []
    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one bar per tiny file says nothing
    try:
        with tempfile.TemporaryDirectory(prefix="qs-compare-") as tmp:
            for i, j in enumerate(jobs):
                search = j.stage("search")
                if search is None:
                    continue
                folder = Path(tmp) / str(i)
                folder.mkdir()
                path = fetch_front(tracking_uri, search.run_id, folder)
                if path is not None:
                    out.append((j, pd.read_parquet(path)))
    finally:
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar
    return out


def fronts_png(items: Sequence[tuple[JobSummary, Any]], path: str | Path, title: str | None = None) -> Path:
    """Overlay each job's predicted Pareto front (line) and its finalists' measured test accuracy (stars) on
    accuracy % against BitOps (log); written atomically as PNG."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from quantsearch._util import atomic_write_bytes

    fig = Figure(figsize=(8, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (job, df) in enumerate(items):
        color = f"C{i % 10}"
        label = (job.run_name or f"{job.experiment} {job.run_id[:8]}") + (f" ({job.budget})" if job.budget else "")
        front = df[df["on_front"]].sort_values("bitops")
        ax.plot(front["bitops"], 100 * front["accuracy"], "o-", color=color, markersize=3, linewidth=1.2,
                label=f"{label}: predicted front")
        if "measured_test_acc" in df.columns:
            fin = df[df["measured_test_acc"].notna()]
            if len(fin):
                ax.scatter(fin["bitops"], 100 * fin["measured_test_acc"].astype(float), marker="*", s=80,
                           color=color, edgecolors="k", linewidths=0.4, zorder=5, label=f"{label}: measured (test)")
    ax.set_xscale("log")
    ax.set_xlabel("BitOps")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or f"Pareto fronts of {len(items)} job run(s)")
    ax.grid(True, which="both", alpha=0.25)
    if items:
        ax.legend(fontsize=6, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no search run logged a front", ha="center", va="center", transform=ax.transAxes)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue())
    return out


# ----------------------------------------------------------------------------------------------- the parent's story


def run_link(experiment_id: str, run_id: str) -> str:
    """The MLflow UI's (relative) link to a run."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def _artifacts(client: Any, run_id: str, limit: int = 12) -> list[str]:
    """A run's artifact files (top level and one folder down), at most `limit`."""
    out: list[str] = []
    for a in client.list_artifacts(run_id):
        if a.is_dir:
            out += [b.path + ("/" if b.is_dir else "") for b in client.list_artifacts(run_id, a.path)]
        else:
            out.append(a.path)
        if len(out) >= limit:
            return [*out[:limit], "..."]
    return out


def link_parent(tracking_uri: str, parent_run_id: str) -> JobSummary | None:
    """Write the job's story onto its parent run: a note (the run's description in the UI) with a linked line per
    stage run, its key figures, wall time and files; tags `child.<stage>` = run id; the key figures as
    `<stage>.<metric>` metrics and the export's registered model as tags. Returns the summary."""
    import mlflow

    client = _client(tracking_uri)
    parent = client.get_run(parent_run_id)
    exp_id = parent.info.experiment_id
    exps = {exp_id: client.get_experiment(exp_id).name}
    with _using(tracking_uri):
        df = mlflow.search_runs(experiment_ids=[exp_id], output_format="pandas",
                                filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
        own = mlflow.search_runs(experiment_ids=[exp_id], output_format="pandas",
                                 filter_string=f"attributes.run_id = '{parent_run_id}'")
    import pandas as pd

    if "tags.mlflow.parentRunId" in own.columns:  # the parent itself may be nested in nothing: drop the tag
        own = own.drop(columns=["tags.mlflow.parentRunId"])
    jobs = summarize(pd.concat([own, df], ignore_index=True) if len(df) else own, exps)
    if not jobs:
        return None
    job = jobs[0]
    lines = [f"**{job.job}**: {job.model or '?'} on {job.data or '?'}; stages {', '.join(job.stages) or '-'}.", "",
             "| stage | run | seconds | figures | files |", "| --- | --- | --- | --- | --- |"]
    tags: dict[str, str] = {}
    figures: dict[str, float] = {}
    for c in job.children:
        if c.run_id == parent_run_id:
            continue
        key = c.name if f"child.{c.name}" not in tags else f"{c.name}.{c.run_id[:6]}"
        tags[f"child.{key}"] = c.run_id
        shown = []
        for metric, label, unit in KEY_METRICS.get(c.name, ()):
            if metric in c.metrics:
                v = figures[f"{c.name}.{metric}"] = c.metrics[metric]
                shown.append(f"{label} {100 * v:.2f} %" if unit == "frac" else f"{label} {v:.2f} %" if unit == "pct"
                             else f"{label} {v:.4g}")
        if c.seconds is not None:
            figures[f"{c.name}.seconds"] = c.seconds
        files = _artifacts(client, c.run_id)
        lines.append(f"| {c.name} | [{c.run_id[:8]}]({run_link(exp_id, c.run_id)}) | "
                     f"{'-' if c.seconds is None else f'{c.seconds:.0f}'} | {'; '.join(shown) or '-'} | "
                     f"{', '.join(files) or '-'} |")
    if job.export_model:
        tags["export.registered_model"] = job.export_model
        tags["export.version"] = job.export_version or ""
        lines += ["", f"Exported model: `models:/{job.export_model}/{job.export_version or '?'}`."]
    if job.budget:
        lines += ["", f"Search budget: {job.budget}; best test {_pct(job.best_test_acc)} % (val "
                      f"{_pct(job.best_val_acc)} %)."]
    tags["mlflow.note.content"] = "\n".join(lines)
    import time

    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    client.log_batch(parent_run_id, metrics=[Metric(k, float(v), now, 0) for k, v in figures.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    return job


__all__ = ["FRONT_ARTIFACT", "JobSummary", "StageRun", "compare_table", "fetch_front", "fronts", "fronts_png",
           "job_summaries", "link_parent", "run_link", "summarize"]
