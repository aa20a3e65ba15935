"""A rich progress bar for an epoch that disappears when progress is off or output is not a terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def epoch_progress(label: str, total: int, enabled: bool = True) -> Iterator[Callable[[int, float], None]]:
    """Yield a callback (batch index, loss) that advances a progress bar."""
    if not enabled:
        yield lambda i, loss: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), transient=True) as prog:
        task = prog.add_task(label, total=total, loss=float("nan"))
        yield lambda i, loss: prog.update(task, advance=1, loss=loss)
