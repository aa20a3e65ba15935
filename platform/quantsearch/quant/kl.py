"""TensorRT-style entropy (KL) calibration, vectorised over every candidate threshold at once.

Choices (documented because implementations differ): a 2048-bin histogram of |x| on [0, A], A = max|x|;
candidate cuts i = L..2048 (L = 2^(b-1) levels signed, 2^b unsigned); P = H[:i] with the tail sum(H[i:])
added to bin i-1; Q = H[:i] merged into L groups (bin j -> group floor(j*L/i)) and expanded back, each
group's mass spread evenly over its non-empty bins; P and Q normalised; bins where P > 0 but Q = 0 get
Q = 1e-10 (no other smoothing); the FIRST minimum of KL(P||Q) wins; T = (i* + 0.5) * A / 2048.
"""

from __future__ import annotations

import torch

BINS = 2048
_EPS = 1e-10


def abs_histogram(x: torch.Tensor, bins: int = BINS, amax: float | None = None) -> tuple[torch.Tensor, float]:
    """Histogram of |x| on [0, amax] (default max|x|); returns (counts float64, amax)."""
    a = x.detach().abs().reshape(-1).double()
    top = float(a.max()) if amax is None else amax
    if top <= 0:
        return torch.zeros(bins, dtype=torch.float64), 0.0
    return torch.histc(a.clamp_max(top), bins=bins, min=0.0, max=top), top


def kl_divergences(hist: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cuts i, KL(P_i || Q_i)) for every cut i in [levels, len(hist)], computed as one [cuts, bins] batch."""
    h = hist.double()
    n = h.numel()
    cuts = torch.arange(levels, n + 1)
    j = torch.arange(n)
    keep = j[None, :] < cuts[:, None]  # [C, n]
    hk = torch.where(keep, h[None, :], 0.0)
    tail = torch.flip(torch.cumsum(torch.flip(h, [0]), 0), [0])  # tail[k] = sum(h[k:])
    p = hk.clone()
    tails = torch.cat([tail, torch.zeros(1, dtype=h.dtype)])[cuts]
    p[torch.arange(len(cuts)), cuts - 1] += tails
    group = torch.div(j[None, :] * levels, cuts[:, None], rounding_mode="floor").clamp_max(levels - 1)
    group = torch.where(keep, group, levels)  # bins past the cut go to a dummy group
    rows = torch.arange(len(cuts))[:, None].expand_as(group)
    flat = rows * (levels + 1) + group
    mass = torch.zeros(len(cuts) * (levels + 1), dtype=h.dtype).scatter_add_(0, flat.reshape(-1), hk.reshape(-1))
    nonzero = (hk > 0).double()
    count = torch.zeros_like(mass).scatter_add_(0, flat.reshape(-1), nonzero.reshape(-1))
    q = torch.where(hk > 0, (mass / count.clamp_min(1))[flat], 0.0)
    p = p / p.sum(1, keepdim=True).clamp_min(_EPS)
    q = q / q.sum(1, keepdim=True).clamp_min(_EPS)
    q = torch.where((p > 0) & (q <= 0), _EPS, q)
    terms = torch.where(p > 0, p * torch.log(p / q), 0.0)
    return cuts, terms.sum(1)


def kl_threshold(hist: torch.Tensor, amax: float, levels: int) -> float:
    """The KL-optimal clip threshold for a histogram of |x| on [0, amax]."""
    if amax <= 0 or hist.sum() <= 0:
        return 0.0
    if levels >= hist.numel():
        return amax
    cuts, kl = kl_divergences(hist, levels)
    best = int(cuts[int(torch.argmin(kl))])
    return (best + 0.5) * amax / hist.numel()
