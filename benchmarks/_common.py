"""Shared by the benchmark scripts: machine facts and writing results/<name>.json."""

from __future__ import annotations

import os
import platform as _platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch._inductor.config as inductor_config

# inductor compiles in this process, not in a pool of worker processes: on 2 cores the pool's workers, warm after a
# compile, competed with the steps timed right after it (one run timed compiled FP32 as slow as eager)
inductor_config.compile_threads = 1

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

from quantsearch._util import atomic_write_json  # noqa: E402
from quantsearch.allocator import tune_host_allocator  # noqa: E402

# as the CLI and its Ray workers do: both columns of every comparison run with the same allocator settings
ALLOCATOR_TUNED = tune_host_allocator()

RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "runs" / "bench"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {"cpu": _platform.processor() or _platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": sys.version.split()[0],
            "cuda": torch.cuda.is_available(), "host_allocator_tuned": ALLOCATOR_TUNED}


def median_time(fn, repeats: int, warmup: int = 3) -> float:
    """Median wall time of `fn()` over `repeats` runs after `warmup` runs (robust on a shared 2-core box)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write benchmarks/results/<name>.json with the machine, the command and a timestamp."""
    out = RESULTS / f"{name}.json"
    atomic_write_json(out, {"benchmark": name, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                            "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%S"), **payload})
    print(f"wrote {out.relative_to(ROOT)}")
    return out
