"""The predictor's data: the measured table (one row per measured subnet) as arrays, and a seeded split by subnet."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from quantsearch.errors import ConfigError
from quantsearch.space.encoding import FeatureEncoder
from quantsearch.space.subnet import SubnetConfig

REQUIRED = ("config", "avg_bits", "bitops", "val_acc")
# fewer held-out subnets make Kendall's tau mostly noise; fewer training rows fit nothing
MIN_HELDOUT, MIN_TRAIN = 3, 4


@dataclass(frozen=True, eq=False)
class MeasuredSet:
    """Measured subnets as arrays: configs, features X, accuracy y (fraction), BitOps and mean bits."""

    configs: tuple[SubnetConfig, ...]
    X: npt.NDArray[np.float32]
    y: npt.NDArray[np.float64]
    bitops: npt.NDArray[np.float64]
    avg_bits: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.configs)

    def subset(self, idx: npt.NDArray[np.int64]) -> MeasuredSet:
        """The rows at `idx`, in that order."""
        return MeasuredSet(tuple(self.configs[i] for i in idx), self.X[idx], self.y[idx], self.bitops[idx],
                           self.avg_bits[idx])


def table_columns(table: Any) -> dict[str, list[Any]]:
    """Columns of a pyarrow Table or a sequence of row dicts, as lists; ConfigError names a missing column."""
    if hasattr(table, "column_names") and hasattr(table, "column"):  # pyarrow.Table, without importing pyarrow
        have = list(table.column_names)
        cols = {name: table.column(name).to_pylist() for name in REQUIRED if name in have}
    elif isinstance(table, Sequence) and all(isinstance(r, Mapping) for r in table):
        have = sorted({k for r in table for k in r}) if table else []
        cols = {name: [r.get(name) for r in table] for name in REQUIRED if name in have}
        absent = next((i for name in cols for i, v in enumerate(cols[name]) if v is None), None)
        if absent is not None:
            raise ConfigError(f"measured table row {absent} lacks a value in one of {list(REQUIRED)}; "
                              f"every row needs all of them")
    else:
        raise ConfigError(f"measured table must be a pyarrow Table or a list of row dicts, not {type(table).__name__}")
    for name in REQUIRED:
        if name not in cols:
            raise ConfigError(f"measured table lacks column '{name}' (it has {have}); "
                              f"the sample stage writes {list(REQUIRED)}")
    return cols


def _configs(texts: list[Any]) -> tuple[SubnetConfig, ...]:
    parsed: dict[str, SubnetConfig] = {}  # sampled tables repeat configs (max/min, re-measures): parse each once
    out = []
    for row, text in enumerate(texts):
        key = str(text)
        if key not in parsed:
            try:
                parsed[key] = SubnetConfig.from_json(key)
            except (ValueError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
                raise ConfigError(f"measured table row {row}: 'config' is not a subnet config JSON ({exc}); "
                                  f"write it with SubnetConfig.to_json()") from exc
        out.append(parsed[key])
    return tuple(out)


def _floats(name: str, values: list[Any]) -> npt.NDArray[np.float64]:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"measured table column '{name}' holds non-numbers ({exc})") from exc
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ConfigError(f"measured table column '{name}' is not finite at row {int(bad[0])} ({arr[bad[0]]})")
    return arr


def measured_set(table: Any, encoder: FeatureEncoder) -> MeasuredSet:
    """Parse and encode a measured table (pyarrow Table or row dicts); other columns are ignored."""
    cols = table_columns(table)
    configs = _configs(cols["config"])
    y = _floats("val_acc", cols["val_acc"])
    outside = np.flatnonzero((y < 0) | (y > 1))
    if outside.size:
        raise ConfigError(f"measured table: val_acc must be a fraction 0..1, row {int(outside[0])} has "
                          f"{y[outside[0]]}; divide percentages by 100")
    return MeasuredSet(configs, encoder.encode(configs), y, _floats("bitops", cols["bitops"]),
                       _floats("avg_bits", cols["avg_bits"]))


def _heldout_count(n_subnets: int, holdout: float) -> int:
    return round(holdout * n_subnets)


def min_subnets(holdout: float) -> int:
    """Fewest distinct subnets a split with this held-out share accepts."""
    n = MIN_HELDOUT + MIN_TRAIN
    while _heldout_count(n, holdout) < MIN_HELDOUT or n - _heldout_count(n, holdout) < MIN_TRAIN:
        n += 1
    return n


def split_by_subnet(configs: Sequence[SubnetConfig], holdout: float, seed: int
                    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(train rows, held-out rows): a seeded share `holdout` of the distinct subnets is held out; rows of one
    subnet (re-measures) stay on one side, so the held-out metrics never score a subnet the model trained on."""
    groups: dict[SubnetConfig, list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault(cfg, []).append(i)
    n = len(groups)
    need = min_subnets(holdout)
    if n < need:
        raise ConfigError(f"the measured table has {n} distinct subnets ({len(configs)} rows); a predictor with "
                          f"holdout {holdout} needs at least {need}: measure more subnets (sample.subnets)")
    members = list(groups.values())  # first-appearance order, so the split depends on the data and seed only
    order = np.random.default_rng(seed).permutation(n)
    n_held = _heldout_count(n, holdout)
    held = sorted(i for g in order[:n_held] for i in members[g])
    train = sorted(i for g in order[n_held:] for i in members[g])
    return np.asarray(train, dtype=np.int64), np.asarray(held, dtype=np.int64)
