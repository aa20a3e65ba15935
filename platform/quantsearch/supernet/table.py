"""The uniform table: every uniform subnet (bits x network-wide form) measured on val and test; saved as
CSV, Parquet and a PNG plot (accuracy vs bits, one line per form)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from quantsearch._util import atomic_write_bytes
from quantsearch.config import SupernetSpec
from quantsearch.data import PreparedData
from quantsearch.space import SearchSpace
from quantsearch.supernet.measure import measure
from quantsearch.supernet.sampling import net_forms

Row = dict[str, object]


def uniform_table(model: nn.Module, space: SearchSpace, data: PreparedData, sn: SupernetSpec) -> list[Row]:
    """Measure W{b}A{b} for each b in sn.table_bits the profile allows, in the first or every form."""
    forms = net_forms(space)
    if sn.table_forms == "first":
        forms = forms[:1]
    p = space.profile
    rows: list[Row] = []
    for form in forms:
        for b in sn.table_bits:
            if b not in p.weight_bits or b not in p.act_bits:
                continue
            cfg = space.uniform(b, b, form.granularity, form.w_symmetric, form.a_symmetric)
            m = measure(model, cfg, data, sn.bn_images, test=True)
            rows.append({"bits": b, "form": form.label(), "config": f"W{b}A{b}", "val_acc": m.val_acc,
                         "test_acc": m.test_acc})
    return rows


def save_table(rows: list[Row], out_dir: str | Path) -> dict[str, Path]:
    """Write table.csv, table.parquet and table.png into out_dir (each atomically)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    table = pa.Table.from_pylist(rows)
    paths = {"csv": out_dir / "table.csv", "parquet": out_dir / "table.parquet", "png": out_dir / "table.png"}
    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    atomic_write_bytes(paths["csv"], buf.getvalue())
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(paths["parquet"], buf.getvalue())
    fig, ax = plt.subplots(figsize=(6, 4))
    for form in sorted({str(r["form"]) for r in rows}):
        pts = sorted((int(str(r["bits"])), 100 * float(str(r["test_acc"]))) for r in rows if r["form"] == form)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=form)
    ax.set_xlabel("bits (weights = activations)")
    ax.set_ylabel("test accuracy %")
    ax.set_title("supernet: uniform subnets")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(paths["png"], buf.getvalue())
    return paths
