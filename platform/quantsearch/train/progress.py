"""Progress of one epoch or phase: a rich bar on a terminal; elsewhere (logs, CI, Ray Jobs) plain lines."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

LINE_INTERVAL_S = 30.0


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


@contextmanager
def epoch_progress(label: str, total: int, enabled: bool = True, stream: TextIO | None = None,
                   interval: float = LINE_INTERVAL_S) -> Iterator[Callable[[int, float], None]]:
    """Yield a callback (batch index, loss) that reports progress.

    On a terminal: a transient rich bar. Otherwise one line when the phase ends, e.g.
    `fp32 epoch 1/4: 430/430 steps, loss 0.412, 45.2s`, and for long phases at most one line every
    `interval` seconds before that. Nothing when `enabled` is False.
    """
    if not enabled:
        yield lambda i, loss: None
        return
    out = stream if stream is not None else sys.stdout
    if _is_terminal(out):
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), transient=True) as prog:
            task = prog.add_task(label, total=total, loss=float("nan"))
            yield lambda i, loss: prog.update(task, advance=1, loss=loss)
        return
    start = time.perf_counter()
    state = {"steps": 0, "loss": float("nan"), "last": start}

    def line(now: float) -> None:
        out.write(f"{label}: {state['steps']}/{total} steps, loss {state['loss']:.3f}, {now - start:.1f}s\n")
        out.flush()

    def tick(i: int, loss: float) -> None:
        state["steps"] += 1
        state["loss"] = float(loss)
        now = time.perf_counter()
        if now - state["last"] >= interval and state["steps"] < total:
            state["last"] = now
            line(now)

    yield tick
    line(time.perf_counter())
