"""Parquet tables of result rows (measured subnets, search fronts): read, and write atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from quantsearch._util import atomic_write_bytes
from quantsearch.errors import ConfigError


def write_rows(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as a Parquet table (temp file + rename: a killed writer leaves the previous table)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a Parquet table; an unreadable file is a one-line ConfigError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return list(pq.read_table(path).to_pylist())
    except FileNotFoundError as exc:
        raise ConfigError(f"table {path} does not exist") from exc
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(f"{path} is not a readable Parquet table ({exc}); delete it or point to another") from exc
