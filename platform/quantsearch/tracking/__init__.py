"""MLflow tracking: one parent run per job, nested child runs per stage; rank-0 epoch logging."""

from quantsearch.tracking.mlflow_tracking import (
    EpochLogger,
    JobTracker,
    TrackingError,
    check_reachable,
    flatten,
    resolve_uri,
)

__all__ = ["EpochLogger", "JobTracker", "TrackingError", "check_reachable", "flatten", "resolve_uri"]
