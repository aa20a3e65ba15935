"""Measuring chunks of subnets as parallel Ray Tune trials (sampling for CQAP, measured search fitness, finalists).

One trial per chunk: it loads the supernet checkpoint once and measures every config of its chunk, so Tune's
per-trial overhead is paid once per chunk. Rows come back through a Tune callback as each trial reports, so the
caller can append them to its table while other trials still run. Where each trial ran (Ray node id, hostname, pid)
is kept in `<storage>/<name>-trials.json`.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray import tune

from quantsearch._util import atomic_write_json
from quantsearch.allocator import tune_host_allocator
from quantsearch.errors import QuantsearchError
from quantsearch.space import SubnetConfig
from quantsearch.supernet.sample import Row
from quantsearch.supernet.sample_job import Chunk, RunChunks

# Tune pickles its callbacks with the tuner's state: they carry a token, and the queue stays here
_QUEUES: dict[str, queue.Queue[tuple[str, Any]]] = {}


class _Forward(tune.Callback):
    """Puts each trial's reported rows on the driver-side queue named by `token`."""

    def __init__(self, token: str) -> None:
        self.token = token

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        """Forward the rows a trial reported."""
        where = {"index": result.get("index"), "node_id": result.get("node_id"), "hostname": result.get("hostname"),
                 "pid": result.get("pid")}
        _QUEUES[self.token].put(("rows", (json.loads(result["rows"]), where)))


def _trial(config: dict[str, Any]) -> None:
    import ray
    import ray.tune
    import torch

    from quantsearch.supernet.sample_job import context_from_args

    tune_host_allocator()  # a worker process of its own: the CLI's setting does not reach it
    torch.set_num_threads(1)
    chunk = json.loads(Path(config["chunks_file"]).read_text())[config["index"]]
    ctx = context_from_args(config["ctx"], config["device"])
    rows = ctx.measure([SubnetConfig.from_json(c) for c in chunk])
    if config.get("test"):
        from quantsearch.config import DataSpec
        from quantsearch.data import ArrayBatches, prepare_data

        data = prepare_data(DataSpec.model_validate(config["ctx"]["data"]))
        test = ArrayBatches(data.test, 512, data.mean, data.std)
        for row in rows:
            row["test_acc"] = ctx.test_acc(SubnetConfig.from_json(row["config"]), test)
    ray.tune.report({"rows": json.dumps(rows), "index": config["index"],
                     "node_id": ray.get_runtime_context().get_node_id()})


def tune_chunks(ctx_args: dict[str, Any], workers: int, storage: str | Path, name: str, address: str | None = None,
                device: str = "cpu", test: bool = False) -> RunChunks:
    """A RunChunks that measures chunks as Ray Tune trials, `workers` at a time (one CPU each; on CUDA they share
    the GPU), yielding each chunk's rows as its trial reports; `test` adds test top-1 (finalists only). Each
    trial's placement (node id, hostname, pid) is appended to `<storage>/<name>-trials.json` as it reports."""

    def run(chunks: list[Chunk]) -> Iterator[list[Row]]:
        if not chunks:
            return
        from quantsearch.distributed.ray_env import init_ray

        init_ray(address)
        storage_dir = Path(storage).resolve()
        chunks_file = storage_dir / f"{name}-chunks.json"
        atomic_write_json(chunks_file, [[c.to_json() for c in chunk] for chunk in chunks])
        placed_file = storage_dir / f"{name}-trials.json"
        placed: list[dict[str, Any]] = []
        token = f"{name}-{id(chunks)}"
        results: queue.Queue[tuple[str, Any]] = queue.Queue()
        _QUEUES[token] = results

        resources: dict[str, float] = {"cpu": 1, "gpu": 1.0 / workers} if device.startswith("cuda") else {"cpu": 1}
        tuner = tune.Tuner(
            tune.with_resources(_trial, resources),
            param_space={"index": tune.grid_search(list(range(len(chunks)))), "chunks_file": str(chunks_file),
                         "ctx": ctx_args, "device": device, "test": test},
            tune_config=tune.TuneConfig(max_concurrent_trials=workers),
            run_config=tune.RunConfig(name=name, storage_path=str(storage_dir), callbacks=[_Forward(token)], verbose=0))

        def fit() -> None:
            try:
                grid = tuner.fit()
                results.put(("done", [str(e).splitlines()[0] for e in grid.errors]))
            except BaseException as exc:
                results.put(("done", [f"{type(exc).__name__}: {exc}"]))

        thread = threading.Thread(target=fit, daemon=True)
        thread.start()
        try:
            while True:
                kind, value = results.get()
                if kind == "rows":
                    rows, where = value
                    placed.append({**where, "subnets": len(rows)})
                    atomic_write_json(placed_file, placed)
                    yield rows
                    continue
                thread.join()
                if value:
                    raise QuantsearchError(f"{len(value)} measuring trial(s) failed: {value[0]}")
                return
        finally:
            _QUEUES.pop(token, None)

    return run
