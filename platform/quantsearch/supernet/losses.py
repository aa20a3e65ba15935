"""EQ-Net's losses: Weight Distribution Regularization (WDR) and Group Progressive Guidance (GPG)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quantsearch.quant.convert import quant_info, quant_layers

UNIFORM_KURTOSIS = 1.8


def wdr_loss(model: nn.Module, w_kurt: float = 0.015, w_skew: float = 1.0, skip_first: bool = True
             ) -> torch.Tensor:
    """w_k * mean_l (kurt_l - 1.8)^2 + w_s * mean_l skew_l^2 over quantized weight tensors.

    Pushes weights toward a uniform-like shape that quantizes well at every bit-width (KURE-style).
    """
    layers = quant_layers(model)
    names = [n for n in quant_info(model).order if n in layers]
    if skip_first:  # the EQ-Net release leaves the first layer out
        names = names[1:]
    skews, kurts = [], []
    for name in names:
        w = layers[name].weight.reshape(-1)
        if w.numel() < 2:
            continue
        z = (w - w.mean()) / (w.std(unbiased=False) + 1e-8)
        skews.append(z.pow(3).mean())
        kurts.append(z.pow(4).mean())
    if not skews:
        return torch.zeros(())
    return w_kurt * torch.stack([(k - UNIFORM_KURTOSIS) ** 2 for k in kurts]).mean() + \
        w_skew * torch.stack([s**2 for s in skews]).mean()


def gpg_loss(logits: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, lam: float = 0.5,
             temperature: float = 1.0) -> torch.Tensor:
    """lam * KL(softmax(t/T) || softmax(z/T)) * T^2 + (1 - lam) * CE(z, y); t is detached."""
    t = temperature
    kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher.detach() / t, dim=1),
                  reduction="batchmean", log_target=True) * t * t
    return lam * kl + (1 - lam) * F.cross_entropy(logits, target)
