"""What sampling and the genetic search leave in MLflow: a nested run per measured chunk, the merged table, the
front, the finalists measured for real, best.json and the Pareto plot."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quantsearch.tracking.mlflow_tracking import JobTracker

if TYPE_CHECKING:
    from quantsearch.search.job import SearchJobResult
    from quantsearch.supernet.sample_job import SampleResult


def chunk_logger(tracker: JobTracker) -> Any:
    """An `on_chunk(index, rows)` that logs each measured chunk as a nested run (its rows as a table artifact,
    mean/min/max val accuracy, count)."""

    def log(index: int, rows: list[dict[str, Any]]) -> None:
        import tempfile
        from pathlib import Path

        from quantsearch.data.tables import write_rows

        with tracker.child(f"chunk{index}", {"chunk": index, "subnets": len(rows)}):
            accs = [float(r["val_acc"]) for r in rows]
            tracker.log_metrics({"subnets": len(rows), "val_acc_mean": sum(accs) / max(len(accs), 1),
                                 "val_acc_min": min(accs, default=float("nan")),
                                 "val_acc_max": max(accs, default=float("nan"))})
            with tempfile.TemporaryDirectory() as tmp:
                tracker.log_artifact(write_rows(Path(tmp) / f"chunk{index}.parquet", rows))

    return log


def log_sample(tracker: JobTracker, res: SampleResult) -> None:
    """Into the active (sampling) run: counts and timing, the merged table and the space under 'sample/'."""
    accs = [float(r["val_acc"]) for r in res.rows]
    tracker.log_metrics({"subnets": len(res.rows), "new_subnets": res.new, "seconds": res.seconds,
                         "val_acc_mean": sum(accs) / max(len(accs), 1)})
    tracker.log_artifact(res.table, "sample")
    tracker.log_artifact(res.space_path, "sample")


def log_search(tracker: JobTracker, res: SearchJobResult) -> None:
    """Into the active (search) run: the best config's figures, each finalist's and uniform config's measured
    accuracy, timing, and the files (front, uniform, best.json, Pareto plot, archive)."""
    b = res.best
    tracker.log_metrics({"best.predicted_acc": b["predicted_acc"], "best.val_acc": b["val_acc"],
                         "best.test_acc": b["test_acc"], "best.bitops": b["bitops"],
                         "best.weight_bytes": b["weight_bytes"], "best.avg_bits": b["avg_bits"],
                         "evaluations": res.result.n_evaluations, "measurements": res.measurements,
                         "search_seconds": res.search_seconds, "measure_seconds": res.measure_seconds,
                         "front_size": len(res.result.front)})
    for i, r in enumerate(res.finalists):
        tracker.log_metrics({f"finalist{i}.{k}": r[k] for k in ("predicted_acc", "val_acc", "test_acc", "bitops")})
    for r in res.uniform:
        tracker.log_metrics({f"uniform.{r['label']}.{k}": r[k] for k in ("val_acc", "test_acc", "bitops")})
    for p in res.paths.values():
        tracker.log_artifact(p, "search")
