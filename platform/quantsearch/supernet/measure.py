"""Measuring a subnet: BN recalibration, then accuracy (search measures on val; test only for final reports)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from quantsearch.data import Batch, PreparedData
from quantsearch.space import SubnetConfig, set_config
from quantsearch.supernet.bn import bn_batches, recalibrate_bn
from quantsearch.train.loop import evaluate, val_top1


def measure_subnet(model: nn.Module, config: SubnetConfig, batches: Iterable[Batch],
                   bn_batches: Iterable[Batch] | None = None, bn_images: int = 2048) -> float:
    """Activate `config` on a supernet's model, recalibrate BN on `bn_images` images of `bn_batches` (when
    given), return top-1 on `batches` ((x, y), e.g. a val DataLoader)."""
    set_config(model, config)
    if bn_batches is not None:
        recalibrate_bn(model, bn_batches, bn_images)
    return evaluate(model, batches).top1


@dataclass(frozen=True)
class Measurement:
    """Accuracy of one subnet after BN recalibration."""

    val_acc: float
    test_acc: float | None


def measure(model: nn.Module, config: SubnetConfig, data: PreparedData, bn_images: int = 2048,
            test: bool = False, seed: int = 0) -> Measurement:
    """Activate `config`, recalibrate BN on `bn_images` training images, evaluate on val (and test)."""
    set_config(model, config)
    recalibrate_bn(model, bn_batches(data, bn_images, seed), bn_images)
    val = val_top1(model, data)
    tst = evaluate(model, data.test, data.mean, data.std).top1 if test else None
    return Measurement(val, tst)
