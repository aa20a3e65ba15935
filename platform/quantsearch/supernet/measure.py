"""Measuring a subnet: BN recalibration, then accuracy on val (test only for final reports)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from quantsearch.data import PreparedData, take
from quantsearch.space import SubnetConfig, set_config
from quantsearch.supernet.bn import recalibrate_bn
from quantsearch.train.loop import evaluate


@dataclass(frozen=True)
class Measurement:
    """Accuracy of one subnet after BN recalibration."""

    val_acc: float
    test_acc: float | None


def measure(model: nn.Module, config: SubnetConfig, data: PreparedData, bn_images: int = 2048,
            test: bool = False, seed: int = 0) -> Measurement:
    """Activate `config`, recalibrate BN on `bn_images` training images, evaluate on val (and test)."""
    set_config(model, config)
    recalibrate_bn(model, take(data.train, bn_images, seed), data.mean, data.std, bn_images)
    val = evaluate(model, data.val, data.mean, data.std).top1 if len(data.val) else float("nan")
    tst = evaluate(model, data.test, data.mean, data.std).top1 if test else None
    return Measurement(val, tst)
