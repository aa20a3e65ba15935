"""The sampling job: a trained supernet checkpoint + a job spec -> <out>/sample/measured.parquet (+ space.json).

The table is the cache: configs already in it are never measured again, so a re-run only measures what is new and a
killed run loses at most the chunks in flight. Chunks are measured in-process here, or by any `run_chunks` (Ray
Tune trials, distributed/tune_sample.py) that yields each chunk's rows as it finishes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantsearch._util import atomic_write_json
from quantsearch.config import DataSpec, JobSpec, SampleSpec
from quantsearch.data import ArrayBatches, PreparedData, prepare_data, take
from quantsearch.data.tables import read_rows, write_rows
from quantsearch.errors import ConfigError
from quantsearch.quant import get_profile
from quantsearch.space import SearchSpace, SubnetConfig, layer_costs, load_model
from quantsearch.space.cost import LayerCost
from quantsearch.supernet.bn import bn_batches
from quantsearch.supernet.sample import Row, measure_configs, sample_configs
from quantsearch.train.checkpoint import load_checkpoint

Chunk = list[SubnetConfig]
RunChunks = Callable[[list[Chunk]], Iterator[list[Row]]]


def supernet_checkpoint(spec: JobSpec, explicit: str | None = None) -> Path:
    """The supernet checkpoint a stage reads: an explicit path, else <output_dir>/supernet/supernet.pt."""
    return Path(explicit) if explicit else Path(spec.output_dir) / "supernet" / "supernet.pt"


@dataclass
class MeasureContext:
    """A loaded supernet ready to measure subnets: model, space, per-layer costs and the measuring batches."""

    model: nn.Module
    space: SearchSpace
    costs: list[LayerCost]
    val: ArrayBatches
    bn: ArrayBatches
    bn_images: int
    seed: int

    def measure(self, configs: Sequence[SubnetConfig], on_row: Callable[[Row], None] | None = None) -> list[Row]:
        """Measure configs (BN recalibration + val top-1) into measured-table rows."""
        return measure_configs(self.model, self.space, self.costs, configs, self.val, self.bn, self.bn_images,
                               self.seed, on_row)

    def test_acc(self, config: SubnetConfig, test: ArrayBatches) -> float:
        """Top-1 on the test split (finalists only), after the BN recalibration `measure` does."""
        from quantsearch.supernet.measure import measure_subnet

        return measure_subnet(self.model, config, test, self.bn, self.bn_images)


def load_context(ckpt_path: str | Path, data: PreparedData, bn_images: int, val_images: int | None, seed: int,
                 device: str | torch.device = "cpu") -> MeasureContext:
    """Rebuild a supernet from its checkpoint on `device` and the batches every measurement uses."""
    ckpt = load_checkpoint(ckpt_path, kind="supernet")
    if ckpt["dataset"] != data.bundle.name:
        raise ConfigError(f"the supernet {ckpt_path} was trained on {ckpt['dataset']} but the job's data is "
                          f"{data.bundle.name}; set data.name: {ckpt['dataset']}")
    if not len(data.val):
        raise ConfigError("measuring subnets needs a val split: set data.val_size > 0")
    model = load_model(ckpt).to(device)
    space = SearchSpace.for_model(model, get_profile(ckpt["profile"]))
    costs = layer_costs(model, tuple(ckpt["input_shape"]))
    val = ArrayBatches(take(data.val, val_images, seed), 512, data.mean, data.std)
    bn = bn_batches(data, bn_images, seed)
    return MeasureContext(model, space, costs, val, bn, bn_images, seed)


@dataclass(frozen=True)
class SampleResult:
    """What the sampling job measured: all rows (cached + new), how many were new, and where they are."""

    rows: list[Row]
    new: int
    table: Path
    space_path: Path
    seconds: float


def chunks_of(configs: Sequence[SubnetConfig], size: int) -> list[Chunk]:
    """Consecutive chunks of at most `size` configs."""
    return [list(configs[i:i + size]) for i in range(0, len(configs), size)]


def sample_job(spec: JobSpec, data: PreparedData, out_dir: str | Path, run_chunks: RunChunks | None = None,
               on_chunk: Callable[[int, list[Row]], None] | None = None, device: str | torch.device = "cpu"
               ) -> SampleResult:
    """Sample `spec.sample.subnets` subnets of the job's supernet (skipping configs the table already holds),
    measure them chunk by chunk (in-process, or through `run_chunks`), and append each chunk to the table as it
    comes back; `on_chunk(index, rows)` sees each chunk (tracking)."""
    import time

    ss = spec.sample or SampleSpec()
    seed = spec.seed if ss.seed is None else ss.seed
    out_dir = Path(out_dir)
    table, space_path = out_dir / "measured.parquet", out_dir / "space.json"
    ckpt = supernet_checkpoint(spec, ss.checkpoint)
    ctx = load_context(ckpt, data, ss.bn_images, ss.val_images, seed, device)
    rows: list[Row] = read_rows(table) if table.exists() else []
    have = {SubnetConfig.from_json(r["config"]) for r in rows}
    # the same draw every time, minus what the table holds: an interrupted run resumes to the same table
    drawn = sample_configs(ctx.space, ss.subnets, seed, ss.forms)
    todo = [c for c in drawn if c not in have]
    atomic_write_json(space_path, ctx.space.to_dict())
    t0 = time.perf_counter()
    chunks = chunks_of(todo, ss.chunk)
    results: Iterator[list[Row]] = run_chunks(chunks) if run_chunks else (ctx.measure(c) for c in chunks)
    new = 0
    for i, chunk_rows in enumerate(results):
        rows += chunk_rows
        new += len(chunk_rows)
        write_rows(table, rows)  # after every chunk: a killed run keeps what finished
        if on_chunk is not None:
            on_chunk(i, chunk_rows)
    # one order whatever order the chunks finished in: the draw's (rows from other draws keep theirs, first)
    rank = {c: i for i, c in enumerate(drawn)}
    rows.sort(key=lambda r: rank.get(SubnetConfig.from_json(r["config"]), -1))
    write_rows(table, rows)
    return SampleResult(rows, new, table, space_path, time.perf_counter() - t0)


def context_args(spec: JobSpec) -> dict[str, Any]:
    """What a remote worker needs to rebuild the same MeasureContext (plain, serialisable values)."""
    ss = spec.sample or SampleSpec()
    return {"checkpoint": str(supernet_checkpoint(spec, ss.checkpoint).resolve()), "data": spec.data.model_dump(),
            "bn_images": ss.bn_images, "val_images": ss.val_images,
            "seed": spec.seed if ss.seed is None else ss.seed}


def context_from_args(args: dict[str, Any], device: str | torch.device = "cpu") -> MeasureContext:
    """Rebuild a MeasureContext from context_args (in a Ray worker)."""
    data = prepare_data(DataSpec.model_validate(args["data"]))
    return load_context(args["checkpoint"], data, args["bn_images"], args["val_images"], args["seed"], device)
