"""Combining DQSS strategies found on different calibration subsets: agreement, vote, heatmap."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantsearch._util import atomic_write_bytes
from quantsearch.dqss.strategy import Strategy


@dataclass(frozen=True)
class SubsetsResult:
    """Each trial's accuracy, per-layer agreement, and the combined strategy's accuracy."""

    trials: list[dict[str, Any]]
    agreement: dict[str, dict[str, float]]
    combined: dict[str, tuple[str, str]]
    combined_val_acc: float
    combined_test_acc: float
    heatmap: Path
    summary_path: Path


def agreement(strategies: list[Strategy]) -> dict[str, dict[str, float]]:
    """Per layer, the share of subsets that agree with the most common activation / weight choice."""
    out = {}
    for name in strategies[0]:
        a = Counter(s[name].activation for s in strategies)
        w = Counter(s[name].weight for s in strategies)
        out[name] = {"activation": a.most_common(1)[0][1] / len(strategies),
                     "weight": w.most_common(1)[0][1] / len(strategies)}
    return out


def combined_choice(strategies: list[Strategy]) -> dict[str, tuple[str, str]]:
    """Per layer (activation, weight) algorithm by the argmax of the mean p and mean q over subsets."""
    cands = strategies[0].candidates
    out = {}
    for name in strategies[0]:
        mp = [sum(s[name].p[i] for s in strategies) / len(strategies) for i in range(len(cands))]
        mq = [sum(s[name].q[i] for s in strategies) / len(strategies) for i in range(len(cands))]
        best_a = max(range(len(cands)), key=mp.__getitem__)
        best_w = max(range(len(cands)), key=mq.__getitem__)
        out[name] = (cands[best_a], cands[best_w])
    return out


def heatmap(strategies: list[Strategy], path: str | Path) -> Path:
    """PNG: mean p (activations) and mean q (weights) per layer and algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cands = strategies[0].candidates
    names = list(strategies[0])
    p = np.array([[np.mean([s[n].p[i] for s in strategies]) for i in range(len(cands))] for n in names])
    q = np.array([[np.mean([s[n].q[i] for s in strategies]) for i in range(len(cands))] for n in names])
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.35 * len(names) + 1.5))
    for ax, m, title in ((axes[0], p, "activations: mean p"), (axes[1], q, "weights: mean q")):
        im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cands)), cands, rotation=30)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(title)
    fig.colorbar(im, ax=axes, shrink=0.8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
