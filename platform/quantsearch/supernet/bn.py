"""BN recalibration: BN is shared by all subnets, so re-estimate its statistics for the one measured."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from quantsearch.data import ArrayBatches, PreparedData, take
from quantsearch.data.loader import Batch, split_batch
from quantsearch.device import model_device


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Batch], n_images: int = 2048) -> int:
    """Reset running stats and forward the first `n_images` images of `batches` (x or (x, y); no augmentation
    wanted) in train mode, on the model's device.

    Each batch's momentum is b / (seen + b), so the running mean is the average over images even when
    the last batch is smaller (momentum=None would weigh every batch alike). Returns the images used.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
    was = model.training
    model.train()
    device = model_device(model)
    seen = 0
    try:
        for batch in batches:
            x = split_batch(batch)[0][: n_images - seen]
            if len(x) == 0:
                break
            for m in bns:
                m.momentum = len(x) / (seen + len(x))
            model(x.to(device))
            seen += len(x)
            if seen >= n_images:
                break
    finally:
        for m, (mom, _) in zip(bns, saved, strict=True):
            m.momentum = mom
        model.train(was)
    return seen


def bn_batches(data: PreparedData, n_images: int, seed: int = 0) -> ArrayBatches:
    """The `n_images` seeded training images a subnet's BN is recalibrated on: the same ones wherever that subnet is
    measured or rebuilt (sampling, search, export), so its accuracy there is the accuracy measured."""
    return ArrayBatches(take(data.train, n_images, seed), 256, data.mean, data.std)
