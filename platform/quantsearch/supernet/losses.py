"""EQ-Net's losses: Weight Distribution Regularization (WDR) and Group Progressive Guidance (GPG)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quantsearch.quant.convert import quant_info, quant_layers

UNIFORM_KURTOSIS = 1.8


def wdr_weights(model: nn.Module, skip_first: bool = True) -> list[torch.Tensor]:
    """The quantized weight tensors WDR regularizes, in execution order (the first left out with `skip_first`, as
    in the EQ-Net release; tensors of fewer than 2 elements have no shape to regularize)."""
    layers = quant_layers(model)
    names = [n for n in quant_info(model).order if n in layers]
    if skip_first:
        names = names[1:]
    return [layers[n].weight for n in names if layers[n].weight.numel() >= 2]


def wdr_from_weights(weights: list[torch.Tensor], w_kurt: float = 0.015, w_skew: float = 1.0) -> torch.Tensor:
    """w_k * mean_l (kurt_l - 1.8)^2 + w_s * mean_l skew_l^2 over `weights` (what wdr_loss computes; a pure
    function of tensors, so torch.compile fuses every layer's statistics into a few kernels)."""
    if not weights:
        return torch.zeros(())
    skews, kurts = [], []
    for t in weights:
        w = t.reshape(-1)
        z = (w - w.mean()) / (w.std(unbiased=False) + 1e-8)
        skews.append(z.pow(3).mean())
        kurts.append(z.pow(4).mean())
    return w_kurt * torch.stack([(k - UNIFORM_KURTOSIS) ** 2 for k in kurts]).mean() + \
        w_skew * torch.stack([s**2 for s in skews]).mean()


def wdr_loss(model: nn.Module, w_kurt: float = 0.015, w_skew: float = 1.0, skip_first: bool = True
             ) -> torch.Tensor:
    """w_k * mean_l (kurt_l - 1.8)^2 + w_s * mean_l skew_l^2 over quantized weight tensors.

    Pushes weights toward a uniform-like shape that quantizes well at every bit-width (KURE-style).
    """
    return wdr_from_weights(wdr_weights(model, skip_first), w_kurt, w_skew)


def gpg_loss(logits: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, lam: float = 0.5,
             temperature: float = 1.0) -> torch.Tensor:
    """lam * KL(softmax(t/T) || softmax(z/T)) * T^2 + (1 - lam) * CE(z, y); t is detached."""
    t = temperature
    kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher.detach() / t, dim=1),
                  reduction="batchmean", log_target=True) * t * t
    return lam * kl + (1 - lam) * F.cross_entropy(logits, target)
