"""Run a job spec's stages in order: FP32 training, then (if configured) LSQ QAT; print a results table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from quantsearch._util import atomic_write_json
from quantsearch.config import JobSpec
from quantsearch.data import prepare_data


@dataclass(frozen=True)
class StageRow:
    """One line of the results table."""

    stage: str
    config: str
    val_acc: float
    test_acc: float
    seconds: float


def run_job(spec: JobSpec, progress: bool = True, console: Console | None = None) -> list[StageRow]:
    """Run every stage the spec configures; write <output_dir>/results.json and return the rows."""
    from quantsearch.train import train_fp32, train_qat

    console = console or Console()
    out = Path(spec.output_dir)
    data = prepare_data(spec.data)
    console.print(f"[bold]{spec.name}[/]: {spec.model.name} on {data.bundle.name} "
                  f"(train {len(data.train)}, val {len(data.val)}, test {len(data.test)}) -> {out}")
    rows: list[StageRow] = []
    fp = train_fp32(spec, data, out / "fp32", progress=progress)
    rows.append(StageRow("fp32", "FP32", fp.val_acc, fp.test_acc, fp.seconds))
    if spec.qat is not None:
        q = train_qat(spec, data, out / "qat", progress=progress)
        rows.append(StageRow("calibrate (MSE clip)", q.config.summary(), q.ptq_val_acc, float("nan"), 0.0))
        rows.append(StageRow(f"lsq qat x{q.epochs} ep", q.config.summary(), q.val_acc, q.test_acc, q.seconds))
    atomic_write_json(out / "results.json", [r.__dict__ for r in rows])
    console.print(results_table(rows))
    return rows


def results_table(rows: list[StageRow]) -> Table:
    """A rich table of stage results."""
    table = Table(title="quantsearch results")
    for col in ("stage", "config", "val acc %", "test acc %", "train s"):
        table.add_column(col)
    for r in rows:
        fmt = lambda v: "-" if v != v else f"{100 * v:.2f}"  # noqa: E731 - NaN renders as '-'
        table.add_row(r.stage, r.config, fmt(r.val_acc), fmt(r.test_acc), f"{r.seconds:.0f}")
    return table
