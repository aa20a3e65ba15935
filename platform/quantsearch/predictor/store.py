"""A saved predictor's folder: meta.json (format version, model kind, hyper-parameters, extras) beside the
model's own weight file; meta.json is written last, so a folder without it holds no complete predictor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quantsearch._util import atomic_write_json
from quantsearch.errors import CheckpointError

FORMAT_VERSION = 1
META = "meta.json"


def write_meta(directory: str | Path, kind: str, model: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Write meta.json atomically: {"format_version", "kind", "model": <hyper-parameters>, **extra}."""
    atomic_write_json(Path(directory) / META, {"format_version": FORMAT_VERSION, "kind": kind, "model": model,
                                               **(extra or {})})


def read_meta(directory: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read and check meta.json (format version, and `kind` when given); CheckpointError names the fix."""
    path = Path(directory) / META
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{directory} holds no saved predictor ({META} missing); fit one first") from exc
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc}); refit the predictor") from exc
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        found = meta.get("format_version") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path} has predictor format {found!r}, this version reads {FORMAT_VERSION}; "
                              f"refit the predictor")
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{path} holds a '{meta.get('kind')}' predictor, not '{kind}'")
    return meta


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (some libraries explain over several; errors here are one)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
