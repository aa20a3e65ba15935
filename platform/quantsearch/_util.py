"""Small helpers shared by every layer: seeding, atomic writes, close-match suggestions.

numpy and torch are imported where used, so that config (and the CLI's argument parsing) stay light."""

from __future__ import annotations

import difflib
import errno
import json
import os
import random
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantsearch.errors import OutputError

if TYPE_CHECKING:
    import torch

# write failures the user fixes on their side (space, permissions), not bugs
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator seeded the same way."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def disk_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` (itself, or along its cause/context chain) that a full disk, a read-only folder or
    missing permissions raised; None for any other failure."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _OUTPUT_ERRNOS:
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def output_error(path: str | os.PathLike[str] | None, err: OSError) -> OutputError:
    """One line naming the file, the reason and the fix for a write `err` (see disk_error)."""
    where = path or err.filename or "the output folder"
    fix = ("free space there or write elsewhere (output_dir, or --out)" if err.errno in (errno.ENOSPC, errno.EDQUOT)
           else "make the folder writable or write elsewhere (output_dir, or --out)")
    return OutputError(f"cannot write {where}: {err.strerror}; {fix}, then rerun (finished stages are kept)")


def _atomic(path: Path, write: Any) -> None:
    """Call write(file) on a temp file beside `path` and rename it to `path`; on any failure remove the temp file
    (no half-written file under either name), and turn a full disk or a read-only folder into an OutputError."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        err = disk_error(exc)
        if err is not None:
            raise output_error(path, err) from exc
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes to a temp file beside `path` and rename, so no half-written file is left."""
    _atomic(Path(path), lambda fh: fh.write(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically (indent 2, trailing newline)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_torch_save(path: str | os.PathLike[str], obj: Any) -> None:
    """torch.save to a temp file and rename."""
    import torch

    # through a Python file object: a failed write then carries its OSError (torch's own writer only says
    # "unexpected pos")
    _atomic(Path(path), lambda fh: torch.save(obj, fh))
