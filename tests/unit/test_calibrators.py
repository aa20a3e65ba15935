import math
from pathlib import Path

import pytest
import torch
from quantsearch.quant import QuantForm, QuantPolicy, convert, fake_quant, get_calibrator, grid_for
from quantsearch.quant.calibrate import calibrate_active
from quantsearch.quant.easyquant import easyquant_layer
from quantsearch.quant.kl import abs_histogram, kl_divergences, kl_threshold
from quantsearch.space import model_uniform, set_config
from torch import nn

SYM4 = QuantForm(4, "per_tensor", True)


def _reference_kl(hist, levels):
    """A straightforward loop over cuts with the same choices as quant/kl.py (p log(p/0) = inf)."""
    h = hist.double().tolist()
    n, out = len(h), []
    for i in range(levels, n + 1):
        p = h[:i]
        p[i - 1] += sum(h[i:])
        q = [0.0] * i
        groups = [[] for _ in range(levels)]
        for j in range(i):
            groups[min(j * levels // i, levels - 1)].append(j)
        for g in groups:
            nz = [j for j in g if h[j] > 0]
            mass = sum(h[j] for j in g)
            for j in nz:
                q[j] = mass / len(nz)
        sp, sq = sum(p), sum(q)
        kl = 0.0
        for a, b in zip(p, q, strict=True):
            a /= sp
            b = b / sq if sq > 0 else 0.0
            if a > 0:
                kl += a * math.log(a / b) if b > 0 else math.inf
        out.append(kl)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("dist", ["uniform", "gauss", "laplace_outliers", "sparse_relu", "few_values"])
def test_kl_vectorised_matches_reference_loop(dist):
    g = torch.Generator().manual_seed(0)
    x = {"uniform": torch.rand(5000, generator=g), "gauss": torch.randn(5000, generator=g),
         "laplace_outliers": torch.cat([torch.distributions.Laplace(0, 1).sample((5000,)), torch.tensor([40.0])]),
         # many empty bins, mass at zero, a far outlier: exercises empty groups and the tail-only last bin
         "sparse_relu": torch.cat([torch.relu(torch.randn(300, generator=g)) ** 3, torch.tensor([90.0])]),
         "few_values": torch.tensor([0.0, 1.0, 1.0, 2.0, 7.5, 7.5, 100.0])}[dist]
    hist, _ = abs_histogram(x, bins=256)
    cuts, kl = kl_divergences(hist, 16)
    ref = _reference_kl(hist, 16)
    assert cuts.tolist() == list(range(16, 257))
    assert torch.allclose(kl, ref, rtol=1e-6, atol=1e-9)


def _nvidia_amax_entropy(calib_hist, calib_bin_edges, num_bits, unsigned, stride=1, start_bin=128):
    """NVIDIA's `_compute_amax_entropy` (TensorRT tools/pytorch-quantization, calib/histogram.py), ported as
    published: bins[0] = bins[1], cuts from start_bin=128 whatever the bit-width, digitize-based merging, scipy's
    entropy (normalises P and Q), the LAST argmin, amax = the cut's bin edge."""
    from collections import Counter

    import numpy as np
    from scipy.stats import entropy

    bins = np.array(calib_hist, dtype=np.float64)
    bins[0] = bins[1]
    divergences, arguments = [], []
    nbins = 1 << (num_bits - 1 + int(unsigned))
    new_density_counts = np.zeros(nbins, dtype=np.float64)
    for i in range(start_bin, len(bins) + 1, stride):
        new_density_counts.fill(0)
        space = np.linspace(0, i, num=nbins + 1)
        digitized_space = np.digitize(range(i), space) - 1
        digitized_space[bins[:i] == 0] = -1
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density_counts[digitized] += bins[idx]
        counter = Counter(digitized_space)
        for key, val in counter.items():
            if key != -1:
                new_density_counts[key] = new_density_counts[key] / val
        new_density = np.zeros(i, dtype=np.float64)
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density[idx] = new_density_counts[digitized]
        reference_density = np.array(bins[: len(digitized_space)])
        reference_density[-1] += np.sum(bins[i:])
        divergences.append(entropy(reference_density, new_density))
        arguments.append(i)
    divergences = np.array(divergences)
    last_argmin = len(divergences) - 1 - np.argmin(divergences[::-1])
    return float(calib_bin_edges[last_argmin * stride + start_bin]), divergences


@pytest.mark.parametrize("dist", ["gauss", "relu", "laplace_outliers", "spiky"])
@pytest.mark.parametrize(("bits", "unsigned"), [(8, False), (4, False), (4, True), (2, False)])
def test_kl_threshold_equals_nvidias_entropy_calibration(dist, bits, unsigned):
    import numpy as np

    g = torch.Generator().manual_seed(3)
    x = {"gauss": torch.randn(20000, generator=g),
         "relu": torch.relu(torch.randn(20000, generator=g)),  # half exact zeros: the bins[0] = bins[1] rule
         "laplace_outliers": torch.cat([torch.distributions.Laplace(0, 1).sample((20000,)), torch.tensor([40.0])]),
         # a dozen narrow spikes on a smooth bulk (a constant background's responses)
         "spiky": torch.cat([torch.rand(20000, generator=g) * 3, torch.linspace(0.2, 2.6, 12).repeat(400)])}[dist]
    hist, amax = abs_histogram(x)
    edges = np.linspace(0.0, amax, len(hist) + 1)
    ref_t, ref_div = _nvidia_amax_entropy(hist.numpy(), edges, bits, unsigned)
    levels = 2 ** (bits - 1 + int(unsigned))
    ours = kl_threshold(hist, amax, levels, spikes=False)
    assert ours == pytest.approx(ref_t, rel=1e-9, abs=1e-12)
    if dist != "spiky":  # without point masses the spike rule changes nothing
        assert kl_threshold(hist, amax, levels) == ours
    h = hist.clone()
    h[0] = h[1]
    _, div = kl_divergences(h, levels, 128)
    finite = np.isfinite(ref_div)
    assert (np.isfinite(div.numpy()) == finite).all()
    assert np.allclose(div.numpy()[finite], ref_div[finite], rtol=1e-6, atol=1e-9)


def test_kl_spike_rule_on_a_real_spiky_histogram():
    """|x| at a MobileNet's depthwise input (features.1.block.0.0, 512 Fashion-MNIST images, 131k values): half
    exact zeros and a dozen 2-3 % spikes (a constant background's responses). NVIDIA's rule at 8 bits unsigned cuts
    just past the largest spike and clips 17 % of the values (7 points of top-1 lost); ours clips < 1 %."""
    import numpy as np
    from quantsearch.quant.kl import flatten_spikes

    d = np.load(Path(__file__).parent / "data" / "kl_mobilenet_fashion_hist.npz")
    hist, amax = torch.from_numpy(d["counts"]).double(), float(d["amax"])
    centers = (torch.arange(len(hist), dtype=torch.float64) + 0.5) * amax / len(hist)

    def clipped(t: float) -> float:
        return float(hist[centers > t].sum() / hist.sum())

    nvidia, ours = kl_threshold(hist, amax, 256, spikes=False), kl_threshold(hist, amax, 256)
    assert clipped(nvidia) > 0.15
    assert clipped(ours) < 0.01
    flat, last = flatten_spikes(hist)
    assert 250 < last < 400
    assert ours >= (last + 1) * amax / len(hist)  # never below the last spike
    assert flat[last] < 0.2 * hist[last]
    assert torch.equal(flat[0], hist[0])
    assert kl_threshold(hist, amax, 16) > 0.5 * amax  # and at 4 bits


@pytest.mark.parametrize("form", [QuantForm(4, "per_channel", True), QuantForm(4, "per_channel", False)])
def test_kl_keeps_the_whole_range_of_rows_too_small_for_a_histogram(form):
    # a depthwise 3x3 kernel per channel: 9 weights, far fewer than 16 per level; KL there clipped the largest
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 1, 3, 3, generator=g)
    kl, maxabs = get_calibrator("kl").scale_offset(w, form), get_calibrator("maxabs").scale_offset(w, form)
    assert torch.allclose(kl[0], maxabs[0])
    big = torch.randn(4, 4000, generator=g)  # enough values: KL's own choice, which clips the tails
    assert (get_calibrator("kl").scale_offset(big, form)[0] < get_calibrator("maxabs").scale_offset(big, form)[0]).all()


def test_kl_clips_outliers_and_stays_in_range():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(20000), torch.tensor([60.0, -55.0])])
    hist, amax = abs_histogram(x)
    t = kl_threshold(hist, amax, 128)
    assert 0 < t < 0.5 * amax  # the outliers are clipped
    u = torch.rand(20000) * 2 - 1
    hist, amax = abs_histogram(u)
    assert kl_threshold(hist, amax, 128) > 0.8 * amax  # a uniform tensor keeps nearly its whole range


@pytest.mark.parametrize("name", ["maxabs", "mse", "kl", "admm", "torchao-minmax", "torchao-histogram"])
@pytest.mark.parametrize("form", [SYM4, QuantForm(3, "per_tensor", False), QuantForm(8, "per_channel", True)])
def test_each_calibrator_gives_scales_in_range_and_deterministic(name, form):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 200, generator=g) * torch.linspace(0.5, 3, 8)[:, None]
    cal = get_calibrator(name)
    s1, z1 = cal.scale_offset(x, form)
    s2, _z2 = cal.scale_offset(x, form)
    rows = 8 if form.per_channel else 1
    assert s1.shape == (rows,)
    assert torch.equal(s1, s2)
    assert (z1 is None) == form.symmetric
    qmin, qmax = grid_for(form, False)
    amax = x.abs().reshape(rows, -1).amax(1)
    span = s1 * qmax if form.symmetric else s1 * (qmax - qmin)  # the clip range never exceeds the data's
    assert (s1 > 0).all()
    assert (span <= (1 if form.symmetric else 2) * amax * 1.0001 + 1e-6).all()


def test_admm_lowers_mse_vs_maxabs_on_heavy_tails():
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((50000,))
    qmin, qmax = grid_for(SYM4, False)
    err = {}
    for name in ("maxabs", "admm"):
        s, _ = get_calibrator(name).scale_offset(x, SYM4)
        err[name] = float(((fake_quant(x, s, None, qmin, qmax) - x) ** 2).mean())
    assert err["admm"] < 0.5 * err["maxabs"]


def test_easyquant_never_lowers_cosine():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.relu(torch.randn(20, 8, 10, 10))
    wf, af = QuantForm(3, "per_channel", True), QuantForm(3, "per_tensor", True)
    for w_scale in (conv.weight.abs().amax((1, 2, 3)) / 3, conv.weight.abs().amax((1, 2, 3)) / 30):
        res = easyquant_layer(conv, x, wf, af, w_scale, x.max().reshape(1) / 7, True, steps=20, rounds=1)
        assert res.cos_after >= res.cos_before
    assert res.cos_after > res.cos_before + 1e-3  # a badly initialised scale is improved


def test_calibrate_active_all_methods_on_a_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 36, 4))
    x = torch.randn(16, 1, 6, 6)
    q = convert(net, QuantPolicy(), x[:2])
    set_config(q, model_uniform(q, QuantForm(4, "per_channel", True), QuantForm(4, "per_tensor", False)))
    ref = net(x)
    errs = {}
    for m in ("maxabs", "mse", "kl", "admm", "easyquant"):
        report = calibrate_active(q, [x], (m, m), easyquant_steps=10, easyquant_rounds=1)
        errs[m] = float(((q(x).detach() - ref.detach()) ** 2).mean())
        assert (m == "easyquant") == bool(report)
    assert all(e < float((ref**2).mean()) for e in errs.values())
    with pytest.raises(Exception, match="unknown calibration method"):
        calibrate_active(q, [x], ("entropy", "maxabs"))


def test_kl_ignores_the_relu_zero_spike():
    # half the values exactly 0 (after a ReLU): their spike must not drag the 4-bit threshold to the smallest cut
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(50000, generator=g))
    s, _ = get_calibrator("kl").scale_offset(x, QuantForm(4, "per_tensor", True), nonneg=True)
    assert 0.3 * float(x.max()) < float(s) * 15 <= float(x.max())


def test_kl_affine_keeps_a_spike_at_the_minimum():
    # normalised images: a background spike at the minimum must not be clipped
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.full((30000,), -0.8), torch.rand(20000, generator=g) * 2.8 - 0.8])
    form = QuantForm(8, "per_tensor", False)
    s, z = get_calibrator("kl").scale_offset(x, form, nonneg=False)
    qmin, _ = grid_for(form, False)
    lo = (qmin - z) * s  # the real value the lowest grid point stands for
    assert torch.allclose(lo, torch.tensor([-0.8]), atol=1e-5)
    xq = fake_quant(x, s, z, *grid_for(form, False))
    # the background is not clipped: within half a step (the zero point is rounded onto the integer grid)
    assert float((xq[:30000] + 0.8).abs().max()) <= float(s) / 2 + 1e-6


def test_kl_affine_clips_each_side_of_a_signed_bulk():
    # a signed bulk around 0 with one far negative outlier (a linear bottleneck's output): both sides keep
    # the bulk, the outlier is clipped, and the range still spans zero
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(50000, generator=g), torch.tensor([-40.0])])
    form = QuantForm(4, "per_tensor", False)
    s, z = get_calibrator("kl").scale_offset(x, form, nonneg=False)
    qmin, qmax = grid_for(form, False)
    lo, hi = float((qmin - z) * s), float((qmax - z) * s)
    assert -10 < lo < -1
    assert 1 < hi <= float(x.max()) + float(s)
    mse = float((fake_quant(x, s, z, qmin, qmax) - x)[:-1].pow(2).mean())
    s_max, z_max = get_calibrator("maxabs").scale_offset(x, form, nonneg=False)
    assert mse < float((fake_quant(x, s_max, z_max, qmin, qmax) - x)[:-1].pow(2).mean())


def test_torchao_observers_match_torch_and_histogram_never_wider():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(20000, generator=g) * 2 - 0.5, torch.tensor([30.0])])
    form = QuantForm(4, "per_tensor", False)
    s, z = get_calibrator("torchao-minmax").scale_offset(x, form)
    # MinMax: [min, max] mapped onto the 16-level grid, as torch's observer does
    assert torch.allclose(s, torch.tensor([(30.0 + 0.5) / 15]), rtol=1e-5)
    assert float(z) == round(0.5 / float(s))
    s_h, z_h = get_calibrator("torchao-histogram").scale_offset(x, form)
    # the histogram observer searches sub-ranges of [min, max]: never a wider range, a valid grid zero point
    assert 0 < float(s_h) <= float(s) * 1.0001
    assert 0 <= float(z_h) <= 15


def test_calibration_sample_spans_every_column():
    # feature maps whose first column is a constant background: a stride that is a multiple of the width sampled
    # only that column (a histogram of spikes that drove KL to collapse); the random sample follows the data
    from quantsearch.quant.calibrate import collect_inputs

    net = convert(nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1)), QuantPolicy(), None)
    x = torch.rand(64, 4, 24, 24) + 1.0
    x[..., 0] = -5.0  # column 0
    samples, _ = collect_inputs(net, [x], per_batch=1 << 12)
    s = samples["0"]
    assert s.numel() == (1 << 12) + 2  # the sample + the exact min and max
    assert 0.01 < float((s == -5.0).float().mean()) < 0.1  # ~1/24 of the values, not all of them


def test_admm_uses_weight_settings_for_per_tensor_weights():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, 3, 3, generator=g)
    form = QuantForm(4, "per_tensor", True)
    admm = get_calibrator("admm")
    s_w, _ = admm.scale_offset(w, form, kind="weight")
    s_a, _ = admm.scale_offset(w, form, kind="activation")
    s_default, _ = admm.scale_offset(w, form)  # per-tensor without a kind: the activation constants
    assert torch.equal(s_default, s_a)
    from quantsearch.quant.calibrators import ADMMCalibrator

    assert torch.equal(s_w, ADMMCalibrator(c=1.25, iters=1000).scale_offset(w, form, kind="activation")[0])


@pytest.mark.parametrize("method", ["kl", "easyquant"])
def test_layers_reading_one_tensor_get_one_input_scale(method):
    # a ResNet block's first conv and its 1x1 shortcut read one tensor: calibrated per alpha group, they share
    # one input scale (per layer, EasyQuant gave them two)
    from quantsearch.dqss import shared_input_groups
    from quantsearch.models import create

    torch.manual_seed(0)
    x = torch.randn(32, 1, 16, 16)
    q = convert(create("resnet8", 4, 1), QuantPolicy(), x[:2])
    set_config(q, model_uniform(q, QuantForm(4, "per_channel", True), QuantForm(4, "per_tensor", False)))
    groups = shared_input_groups(q, x[:2])
    tied = [(n, lead) for n, lead in groups.items() if lead != n]
    assert tied
    layers = dict(q.named_modules())
    form = QuantForm(4, "per_tensor", False)
    calibrate_active(q, [x], (method, method), easyquant_steps=10, easyquant_rounds=1, groups=groups)
    for n, lead in tied:
        assert torch.equal(layers[n].aq.qparams(form)[0], layers[lead].aq.qparams(form)[0])
        assert torch.allclose(layers[n].aq.qparams(form)[1], layers[lead].aq.qparams(form)[1])
