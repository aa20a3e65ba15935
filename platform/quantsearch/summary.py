"""summary.md: what a run did, in words a person reads — stages, figures, where the files are, the MLflow run."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantsearch._util import atomic_write_bytes

_DIRS = {"fp32": ("fp32",), "qat": ("qat",), "dqss": ("dqss",), "supernet": ("supernet",), "sample": ("sample",),
         "predictor": ("predictor",), "search": ("search", "dqss-best"), "export": ("export",)}


@dataclass(frozen=True)
class StageStatus:
    """How one stage went in this invocation: ran, skipped (up to date, with when it was made) or failed."""

    stage: str
    status: str
    seconds: float = 0.0
    detail: str = ""


def _pct(v: float) -> str:
    return "-" if not isinstance(v, int | float) or math.isnan(v) else f"{100 * v:.2f}"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _files(out: Path, stage: str) -> list[str]:
    lines = []
    for d in _DIRS.get(stage, (stage,)):
        folder = out / d
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.name.startswith("."):
                continue
            size = sum(q.stat().st_size for q in p.rglob("*") if q.is_file()) if p.is_dir() else p.stat().st_size
            lines.append(f"`{p.relative_to(out)}{'/' if p.is_dir() else ''}` ({_size(size)})")
    return lines


def render_summary(name: str, header: dict[str, str], statuses: Sequence[StageStatus],
                   rows: Sequence[dict[str, Any]], out: Path, failure: str | None = None) -> str:
    """The summary as Markdown."""
    lines = [f"# {name}: quantsearch run summary", ""]
    lines += [f"- **{k}**: {v}" for k, v in header.items()]
    lines.append(f"- **written**: {time.strftime('%Y-%m-%d %H:%M:%S')}")
    if failure:
        lines.append(f"- **FAILED**: {failure}")
    lines += ["", "## Stages", "", "| stage | status | seconds | note |", "|---|---|---|---|"]
    for s in statuses:
        lines.append(f"| {s.stage} | {s.status} | {s.seconds:.0f} | {s.detail} |")
    if rows:
        lines += ["", "## Figures (val: held-out training images; test: the test split)", "",
                  "| result | config | BitOps (M) | val % | test % |", "|---|---|---|---|---|"]
        for r in rows:
            bitops = r.get("bitops", float("nan"))
            bits = "-" if bitops != bitops else f"{bitops / 1e6:.1f}"
            lines.append(f"| {r['stage']} | {r['config']} | {bits} | {_pct(r['val_acc'])} | {_pct(r['test_acc'])} |")
    lines += ["", "## Files", ""]
    for s in statuses:
        files = _files(out, s.stage)
        if files:
            lines.append(f"- **{s.stage}**: " + ", ".join(files))
    for extra in ("results.json", "stages/"):
        if (out / extra).exists():
            lines.append(f"- `{extra}`" + (" (one marker per finished stage: rerunning skips up-to-date stages)"
                                             if extra == "stages/" else " (the figures above, as JSON)"))
    return "\n".join(lines) + "\n"


def read_statuses(out: Path) -> dict[str, str]:
    """stage -> status, read back from <output_dir>/summary.md's stage table (as render_summary writes it)."""
    text = (out / "summary.md").read_text().split("## Stages")[1].split("\n## ")[0]
    rows = [line.split("|")[1:3] for line in text.splitlines() if line.startswith("| ") and "| stage |" not in line]
    return {stage.strip(): status.strip() for stage, status in rows}


def write_summary(out: Path, text: str) -> Path:
    """Write <output_dir>/summary.md atomically."""
    path = out / "summary.md"
    atomic_write_bytes(path, text.encode())
    return path
