"""BN recalibration: BN is shared by all subnets, so re-estimate its statistics for the one measured."""

from __future__ import annotations

import torch
from torch import nn

from quantsearch.data import ArrayData, batches
from quantsearch.device import model_device


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: ArrayData, mean: float, std: float, n_images: int = 2048,
                   batch_size: int = 256) -> int:
    """Reset running stats and forward `n_images` training images (no augmentation) in train mode.

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
        for x, _ in batches(data, batch_size, mean, std):
            x = x[: n_images - seen]
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
