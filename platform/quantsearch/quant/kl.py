"""TensorRT entropy (KL) calibration, as NVIDIA publishes it, vectorised over every candidate threshold at once.

The choices follow NVIDIA's reference (TensorRT `tools/pytorch-quantization`, `calib/histogram.py`,
`_compute_amax_entropy`) -- the tests check our divergences and thresholds against a port of it on the same
histograms -- because every deviation we tried failed somewhere:
- a histogram of |x| on [0, A], A = max|x|, 2048 bins; bin 0 gets bin 1's count (`bins[0] = bins[1]`): the
  exact zeros after a ReLU (often half the values) otherwise dominate the divergence once bins are merged and
  drive the threshold to the smallest cut (a 4-bit ResNet fell to 19 % top-1);
- cuts i = start..2048 with start = 2048/16 = 128 WHATEVER the bit-width (at least the number of levels
  L = 2^(b-1) signed, 2^b unsigned), so the threshold never falls below 1/16 of the range: starting at L = 8
  at 4 bits let spiky histograms (a MobileNet's stem responses to a constant background) pick absurd cuts;
- P = H[:i] with the tail sum(H[i:]) added to bin i-1; Q = H[:i] merged into L groups (bin j -> group
  floor(j*L/i)) and expanded back, each group's mass spread evenly over its non-empty bins; both normalised;
  KL(P||Q) with the convention p log(p/0) = inf;
- the LAST minimum wins, and T = i* x A/2048 (the cut's edge). With the first minimum, images whose pixels take
  a few discrete values (sklearn's digits) have KL = 0 at the first cut just past a spike (P and Q both a point
  mass there) and lost the background: 15 % top-1 at W8A8 instead of 99 %.

One deliberate departure, for point masses away from zero (`spikes=True`, the default): NVIDIA's bins[0] = bins[1]
rule exists because a point mass is kept exactly by any range that holds it, while Q spreads it over its group's
bins and the divergence explodes. The same happens to every other point mass: a constant image background gives
each channel's response one exact value, so a stem's ReLU output holds a dozen spikes of 2-3 % of the mass each.
At 8 bits a cut with about one bin per level keeps every spike in its own group (no divergence), so the divergence
favours cuts near L bins, and the last minimum falls just past a spike: a MobileNet's depthwise input clipped at
15 % of its range (17 % of values clipped), 7 points lost at W8A8 on Fashion-MNIST. So each spike bin (>= 0.5 % of
the mass, >= 32 values, > 8x its four neighbours' mean) gets its neighbours' mean before the divergence, like
bin 0, and the threshold never cuts below the last spike's edge (clipping a point mass moves all of it). On a
histogram without spikes both variants are the same (the tests check it against the port).
"""

from __future__ import annotations

import torch

BINS = 2048
_EPS = 1e-10


def abs_histogram(x: torch.Tensor, bins: int = BINS, amax: float | None = None) -> tuple[torch.Tensor, float]:
    """Histogram of |x| on [0, amax] (default max|x|), on x's device; returns (counts float64, amax)."""
    a = x.detach().abs().reshape(-1).float()
    top = float(a.max()) if amax is None else amax
    if top <= 0:
        return torch.zeros(bins, dtype=torch.float64, device=x.device), 0.0
    # counts are exact in float32 below 2^24 per bin; larger inputs go through float64
    src = a.clamp_max_(top) if a.numel() < 2**24 else a.double().clamp_max_(top)
    return torch.histc(src, bins=bins, min=0.0, max=top).double(), top


def start_bin(bins: int, levels: int) -> int:
    """The first candidate cut: 1/16 of the bins (NVIDIA's 128 of 2048), at least one bin per level."""
    return min(bins, max(levels, bins // 16))


def kl_divergences(hist: torch.Tensor, levels: int, start: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cuts i, KL(P_i || Q_i)) for every cut i in [start, len(hist)], from prefix sums: O(cuts x levels).

    `hist` is used as given (kl_threshold applies bins[0] = bins[1] first); start defaults to `levels`.

    sum(P) is the whole histogram H for every cut and sum(Q) = H - tail_i, so with group g's mass m_g and
    non-empty count c_g the bins before the last one contribute
        sum_j h_j/H log(h_j/H)  -  sum_g m'_g/H log(m_g / (c_g (H - tail_i)))
    (m'_g: the mass without the last bin, which always falls in group L-1); the last bin, whose P carries
    the tail, is added on its own.
    """
    h = hist.double()
    n = h.numel()
    total = h.sum()
    dev = h.device
    cuts = torch.arange(levels if start is None else start, n + 1, device=dev)
    zero = torch.zeros(1, dtype=h.dtype, device=dev)
    cs = torch.cat([zero, torch.cumsum(h, 0)])  # cs[k] = sum(h[:k])
    cnz = torch.cat([zero, torch.cumsum((h > 0).double(), 0)])
    plogp = torch.where(h > 0, h / total * torch.log(h / total), 0.0)
    cp = torch.cat([zero, torch.cumsum(plogp, 0)])
    g = torch.arange(levels + 1, device=dev)
    # group g of cut i holds bins [ceil(g*i/L), ceil((g+1)*i/L)); the bounds as a [cuts, L+1] table
    bounds = torch.div(g[None, :] * cuts[:, None] + levels - 1, levels, rounding_mode="floor")
    mass = cs[bounds[:, 1:]] - cs[bounds[:, :-1]]  # [C, L]
    count = cnz[bounds[:, 1:]] - cnz[bounds[:, :-1]]
    last = h[cuts - 1]
    head = cs[cuts]  # = sum(Q) before normalising
    tail = total - head
    mass_wo_last = mass.clone()
    mass_wo_last[:, -1] -= last
    qdens = torch.where(mass > 0, mass / count.clamp_min(1), 1.0) / head.clamp_min(_EPS)[:, None]
    cross = torch.where(mass_wo_last > 0, mass_wo_last / total * torch.log(qdens), 0.0).sum(1)
    kl = cp[cuts - 1] - cross
    p_last = (last + tail) / total
    # p log(p/0) = inf (scipy.stats.entropy's convention, which NVIDIA's reference uses): a cut whose last bin
    # is empty while the tail is not can never win
    kl = kl + torch.where(p_last > 0, p_last * torch.log(p_last / qdens[:, -1].where(last > 0, 0.0)), 0.0)
    return cuts, kl


SPIKE_SHARE = 0.005
SPIKE_COUNT = 32
SPIKE_RATIO = 8.0


def flatten_spikes(hist: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(hist with every point-mass bin past bin 0 set to its four neighbours' mean, index of the last such bin or
    -1): a spike holds >= SPIKE_SHARE of the mass and >= SPIKE_COUNT values, and > SPIKE_RATIO x that mean."""
    h = hist.double()
    n = h.numel()
    if n < 3:
        return h.clone(), -1
    pad = torch.nn.functional.pad(h[None, None], (2, 2), mode="replicate")[0, 0]
    neighbours = (pad[:-4] + pad[1:-3] + pad[3:-1] + pad[4:]) / 4
    spike = (h >= SPIKE_SHARE * h.sum()) & (h >= SPIKE_COUNT) & (h > SPIKE_RATIO * neighbours)
    spike[0] = False  # bin 0 has its own rule (bins[0] = bins[1])
    idx = torch.nonzero(spike).reshape(-1)
    if idx.numel() == 0:
        return h.clone(), -1
    return torch.where(spike, neighbours, h), int(idx[-1])


def kl_threshold(hist: torch.Tensor, amax: float, levels: int, spikes: bool = True) -> float:
    """The KL-optimal clip threshold for a histogram of |x| on [0, amax]: NVIDIA's choices, and with `spikes`
    point masses past zero flattened and never clipped (see above)."""
    n = hist.numel()
    if amax <= 0 or hist.sum() <= 0:
        return 0.0
    h, last_spike = flatten_spikes(hist) if spikes else (hist.double().clone(), -1)
    if n > 1:
        h[0] = h[1]
    if h.sum() <= 0:  # everything was exactly zero (or in bin 0)
        return amax
    start = max(start_bin(n, levels), last_spike + 1)
    if start >= n:
        return amax
    cuts, kl = kl_divergences(h, levels, start)
    best = int(cuts[len(kl) - 1 - int(torch.argmin(kl.flip(0)))])  # the last minimum
    return best * amax / n
