"""What a DQSS search leaves in MLflow: settings, accuracies, loss trace, per-layer choices, files."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from quantsearch.dqss import Strategy
from quantsearch.tracking.mlflow_tracking import JobTracker

if TYPE_CHECKING:
    from quantsearch.dqss import DQSSResult
    from quantsearch.dqss.combine import SubsetsResult


def log_dqss_run(tracker: JobTracker, res: DQSSResult) -> None:
    """Into the active run: the search settings, val/test accuracy, the loss trace, the choices, the files."""

    st = res.strategy or Strategy.load(res.strategy_path)
    metrics = json.loads((res.strategy_path.parent / "metrics.json").read_text())
    tracker.log_params({"search": dict(st.search)})
    tracker.log_metrics({k: metrics[k] for k in ("val_acc", "test_acc", "search_seconds", "finetune_seconds")})
    for i, loss in enumerate(metrics["losses"]):
        tracker.log_metrics({"loss": loss}, step=i)
    tracker.set_tags({f"choice.{n}": f"{a}/{w}" for n, (a, w) in st.choices().items()})
    for f in ("strategy.json", "metrics.json"):
        tracker.log_artifact(res.strategy_path.parent / f)


def log_dqss_subsets(tracker: JobTracker, res: SubsetsResult) -> None:
    """A nested run per calibration subset; agreement, the combined strategy's accuracy and the heatmap."""
    for t in res.trials:
        with tracker.child(f"subset{t['index']}", {"subset": t["index"]}):
            tracker.log_metrics({k: t[k] for k in ("val_acc", "test_acc", "search_seconds")})
            tracker.log_artifact(t["strategy"])
    tracker.log_metrics({"combined_val_acc": res.combined_val_acc, "combined_test_acc": res.combined_test_acc,
                         **{f"agreement.{n}.{k}": v for n, a in res.agreement.items() for k, v in a.items()}})
    tracker.log_artifact(res.heatmap)
    tracker.log_artifact(res.summary_path)
