"""Predicted vs measured accuracy of the held-out subnets, as PNG bytes (matplotlib's Agg backend, no display)."""

from __future__ import annotations

import io
import math

from quantsearch.predictor.fit import FitResult


def scatter_png(result: FitResult) -> bytes:
    """Scatter of held-out (measured, predicted) accuracy in %, the y = x line, tau and rho in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, p = 100 * result.measured, 100 * result.predicted
    r = result.report
    fig, ax = plt.subplots(figsize=(5, 5))
    try:
        sc = ax.scatter(m, p, c=result.bitops, cmap="viridis", s=14, alpha=0.8)
        fig.colorbar(sc, ax=ax, label="BitOps")
        lo = float(min(m.min(), p.min())) if len(m) else 0.0
        hi = float(max(m.max(), p.max())) if len(m) else 100.0
        pad = 0.02 * (hi - lo) or 0.5
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", linestyle="--", linewidth=1, label="y = x")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel("measured val accuracy %")
        ax.set_ylabel("predicted accuracy %")

        def fmt(v: float) -> str:
            return f"{v:.3f}" if math.isfinite(v) else "n/a"

        ax.set_title(f"CQAP ({r.model}) held-out, n={r.n_heldout}: tau={fmt(r.overall.tau)} "
                     f"rho={fmt(r.overall.rho)}\nper BitOps band: tau={fmt(r.band_tau)} "
                     f"(avg-bits proxy overall {fmt(r.overall.tau_avg_bits)})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()
