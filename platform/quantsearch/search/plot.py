"""The Pareto plot: accuracy against BitOps for the predicted front, all evaluated points, the uniform baselines and,
when given, the finalists' measured accuracy."""

from __future__ import annotations

import io
from collections.abc import Mapping

from quantsearch.search.result import SearchResult
from quantsearch.space.subnet import SubnetConfig


def pareto_png(result: SearchResult, measured: Mapping[SubnetConfig, float] | None = None,
               title: str | None = None) -> bytes:
    """PNG bytes: x = BitOps (log), y = accuracy %; `measured` maps configs of the result to measured accuracy."""
    # the object API with an Agg canvas: no pyplot, so no global backend or figure state is touched
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pts = [p for p in result.evaluated if not p.label]  # over-budget configs are never scored but the uniform ones
    ax.scatter([p.bitops for p in pts], [100 * p.accuracy for p in pts], s=6, color="0.55", alpha=0.4,
               label="evaluated")
    front = result.front
    ax.plot([p.bitops for p in front], [100 * p.accuracy for p in front], "o-", color="C0", markersize=4,
            linewidth=1.2, label="predicted front")
    if result.uniform:
        ax.scatter([p.bitops for p in result.uniform], [100 * p.accuracy for p in result.uniform], marker="s", s=28,
                   facecolors="none", edgecolors="C1", label="uniform")
        top: dict[str, tuple[float, float]] = {}  # forms share BitOps: label only the best form of each WbAb
        for p in result.uniform:
            bits = p.label.split()[0]
            if bits not in top or 100 * p.accuracy > top[bits][1]:
                top[bits] = (p.bitops, 100 * p.accuracy)
        for bits, (x, y) in top.items():
            ax.annotate(bits, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color="C1")
    if measured:
        by_config = {p.config: p for p in result.evaluated}
        hits = [(by_config[c], acc) for c, acc in measured.items() if c in by_config]
        for p, acc in hits:
            ax.plot([p.bitops, p.bitops], [100 * p.accuracy, 100 * acc], ":", color="C3", linewidth=0.8)
        ax.scatter([p.bitops for p, _ in hits], [100 * acc for _, acc in hits], marker="*", s=90, color="C3",
                   zorder=5, label="finalists, measured")
    if result.budget.bitops is not None:
        ax.axvline(result.budget.bitops, linestyle="--", color="0.3", linewidth=0.8, label="BitOps budget")
    ax.set_xscale("log")
    ax.set_xlabel("BitOps")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or f"Pareto front: {len(front)} of {result.n_evaluations} evaluated configs")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()
