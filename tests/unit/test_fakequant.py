import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from quantsearch.quant import QuantForm, fake_quant, grid_for, int_grid, lsq_grad_factor
from quantsearch.quant.quantizer import ElasticQuantizer

bits_st = st.integers(2, 8)
seed_st = st.integers(0, 2**31 - 1)


def _x(seed, shape=(4, 3, 5, 5), scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


@settings(max_examples=60, deadline=None)
@given(bits=bits_st, seed=seed_st, s=st.floats(0.01, 2.0), zp=st.floats(-20, 20), signed=st.booleans())
def test_on_grid_in_range_idempotent(bits, seed, s, zp, signed):
    qmin, qmax = int_grid(bits, signed)
    x = _x(seed)
    scale, z = torch.tensor(s), torch.tensor(zp)
    y = fake_quant(x, scale, z, qmin, qmax)
    k = y / scale + z  # back to the integer grid (the real zero point shifts the grid, it is not rounded)
    assert torch.allclose(k, k.round(), atol=1e-3)
    assert k.min() >= qmin - 1e-3
    assert k.max() <= qmax + 1e-3
    assert torch.allclose(fake_quant(y, scale, z, qmin, qmax), y, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(bits=bits_st, seed=seed_st, s=st.floats(0.01, 1.0))
def test_per_channel_equals_per_tensor_when_scales_equal(bits, seed, s):
    qmin, qmax = int_grid(bits, True)
    x = _x(seed)
    pc = fake_quant(x, torch.full((4, 1, 1, 1), s), None, qmin, qmax)
    pt = fake_quant(x, torch.tensor(s), None, qmin, qmax)
    assert torch.equal(pc, pt)


@settings(max_examples=80, deadline=None)
@given(bits=bits_st, seed=seed_st, s=st.floats(1e-3, 2.0), zp=st.integers(-10, 10), signed=st.booleans())
def test_oracle_torch_fake_quantize_per_tensor(bits, seed, s, zp, signed):
    qmin, qmax = int_grid(bits, signed)
    zp = min(max(zp, qmin), qmax)  # torch requires qmin <= zero_point <= qmax
    x = _x(seed)
    s32 = torch.tensor(s, dtype=torch.float32)
    ours = fake_quant(x, s32, torch.tensor(float(zp)), qmin, qmax)
    ref = torch.fake_quantize_per_tensor_affine(x, float(s32), zp, qmin, qmax)
    assert torch.equal(ours, ref)
    ours_sym = fake_quant(x, s32, None, qmin, qmax)
    assert torch.equal(ours_sym, torch.fake_quantize_per_tensor_affine(x, float(s32), 0, qmin, qmax))


@settings(max_examples=80, deadline=None)
@given(bits=bits_st, seed=seed_st, signed=st.booleans())
def test_oracle_torch_fake_quantize_per_channel(bits, seed, signed):
    qmin, qmax = int_grid(bits, signed)
    g = torch.Generator().manual_seed(seed)
    x = _x(seed)
    scale = torch.rand(4, generator=g) * 0.5 + 0.01
    zp = torch.randint(qmin, qmax + 1, (4,), generator=g)
    ours = fake_quant(x, scale.reshape(-1, 1, 1, 1), zp.float().reshape(-1, 1, 1, 1), qmin, qmax)
    ref = torch.fake_quantize_per_channel_affine(x, scale, zp.to(torch.int32), 0, qmin, qmax)
    assert torch.equal(ours, ref)


def test_negative_offset_is_allowed_and_helps():
    # a negatively centred channel: the EQ-Net release's abs() on the offset made this ~90x worse
    x = torch.linspace(-3.0, -1.0, 1001)
    qmin, qmax = int_grid(4, False)
    s = torch.tensor(2.0 / 15)
    zp = torch.tensor(qmin - (-3.0) / float(s))  # offset z = -zp*s ~ -3 (negative), zp beyond qmax
    good = ((fake_quant(x, s, zp, qmin, qmax) - x) ** 2).mean()
    clipped = ((fake_quant(x, s, zp.abs() * 0, qmin, qmax) - x) ** 2).mean()
    assert zp > 0
    assert good < clipped / 50


def test_gradients_ste_and_clipping():
    qmin, qmax = int_grid(4, True)
    x = torch.tensor([-5.0, -0.26, 0.13, 0.49, 5.0], requires_grad=True)
    s = torch.tensor(0.1, requires_grad=True)
    y = fake_quant(x, s, None, qmin, qmax)
    y.sum().backward()
    # in range: d/dx = 1 (STE); clipped: 0
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    # LSQ d/ds: clipped -> qmin / qmax; in range -> round(x/s) - x/s
    u = torch.tensor([-0.26, 0.13, 0.49]) / 0.1
    expected = qmin + qmax + float((u.round() - u).sum())
    assert s.grad.item() == pytest.approx(expected, abs=1e-4)


@settings(max_examples=30, deadline=None)
@given(seed=seed_st, bits=bits_st)
def test_scale_and_offset_gradients_match_finite_differences_where_defined(seed, bits):
    # Where every element is clipped the output is smooth in s: autograd must equal finite differences.
    # The real-valued zero point's gradient is -s per clipped element (0 in range), the LSQ+ rule.
    qmin, qmax = int_grid(bits, False)
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.rand(8, generator=g) + 50, -torch.rand(8, generator=g) - 50]).double()
    zp = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: fake_quant(x, a, zp.detach(), qmin, qmax), (s,), eps=1e-6, atol=1e-5)
    fake_quant(x, s, zp, qmin, qmax).sum().backward()
    assert zp.grad.item() == pytest.approx(-0.05 * 16)


def test_ste_gradient_matches_surrogate_finite_difference():
    # In range, round is treated as identity: d x_q / d x = 1, as the finite difference of the surrogate.
    qmin, qmax = int_grid(8, True)
    x = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    fake_quant(x, torch.tensor(0.01, dtype=torch.float64), None, qmin, qmax).sum().backward()
    surrogate = lambda v: torch.clamp(v / 0.01, qmin, qmax) * 0.01  # noqa: E731
    h = 1e-6
    fd = (surrogate(torch.tensor(0.3 + h, dtype=torch.float64))
          - surrogate(torch.tensor(0.3 - h, dtype=torch.float64))) / (2 * h)
    assert x.grad.item() == pytest.approx(float(fd), rel=1e-6)


def test_lsq_gradient_scale_per_channel_and_per_tensor():
    w = torch.randn(6, 3, 3, 3)
    q = ElasticQuantizer("weight", 6)
    q.calibrate(w)
    g_out = torch.randn_like(w)
    # raw gradient without scaling, from the plain formula
    form_pc, form_pt = QuantForm(4, "per_channel", True), QuantForm(4, "per_tensor", True)
    q.set_form(form_pc)
    q.zero_grad()
    q(w).backward(g_out)
    g_pc = q.scale_pc_sym.grad[:, 2].clone()
    s = q.scale_pc_sym.detach()[:, 2].clone().requires_grad_(True)
    qmin, qmax = grid_for(form_pc, False)
    fake_quant(w, s.reshape(-1, 1, 1, 1), None, qmin, qmax).backward(g_out)
    assert torch.allclose(g_pc, s.grad * lsq_grad_factor(27, qmax), rtol=1e-5)
    q.set_form(form_pt)
    q.zero_grad()
    q(w).backward(g_out)
    g_pt = q.scale_pt_sym.grad[:, 2].clone()
    s1 = q.scale_pt_sym.detach()[:, 2].clone().requires_grad_(True)
    fake_quant(w, s1.reshape(()), None, qmin, qmax).backward(g_out)
    assert torch.allclose(g_pt, s1.grad * lsq_grad_factor(w.numel(), qmax), rtol=1e-5)
    assert lsq_grad_factor(27, 7) == pytest.approx(1 / math.sqrt(27 * 7))


@settings(max_examples=60, deadline=None)
@given(bits=bits_st, seed=seed_st, per_channel=st.booleans(), asym=st.booleans(), signed=st.booleans())
def test_fused_function_matches_autograd_reference(bits, seed, per_channel, asym, signed):
    from quantsearch.quant.fakequant import fake_quant_reference

    qmin, qmax = int_grid(bits, signed)
    g = torch.Generator().manual_seed(seed)
    x = _x(seed)
    shape = (4, 1, 1, 1) if per_channel else ()
    s0 = (torch.rand(shape, generator=g) * 0.5 + 0.05)
    z0 = (torch.randn(shape, generator=g) * 3) if asym else None
    gout = torch.randn(x.shape, generator=g)
    results = []
    for fn in (fake_quant, fake_quant_reference):
        xs = x.clone().requires_grad_(True)
        s = s0.clone().requires_grad_(True)
        z = z0.clone().requires_grad_(True) if z0 is not None else None
        out = fn(xs, s, z, qmin, qmax)
        out.backward(gout)
        results.append((out.detach(), xs.grad, s.grad, None if z is None else z.grad))
    (o1, gx1, gs1, gz1), (o2, gx2, gs2, gz2) = results
    assert torch.allclose(o1, o2, atol=1e-6)
    assert torch.allclose(gx1, gx2, atol=1e-6)  # the reference chains x*(1/s)*s: equal up to rounding
    assert torch.allclose(gs1, gs2, rtol=1e-4, atol=1e-4)
    if gz1 is not None:
        assert torch.allclose(gz1, gz2, rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(bits=bits_st, seed=seed_st, signed=st.booleans())
def test_input_gradient_mask_matches_torch(bits, seed, signed):
    qmin, qmax = int_grid(bits, signed)
    x = _x(seed).requires_grad_(True)
    fake_quant(x, torch.tensor(0.3), None, qmin, qmax).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    torch.fake_quantize_per_tensor_affine(x2, 0.3, 0, qmin, qmax).sum().backward()
    assert torch.equal(x.grad, x2.grad)


def _lsq_plus(x, s, beta, qmin, qmax):
    """LSQ+ written out with autograd ops: s * clamp(round_ste((x - beta) / s)) + beta."""
    from quantsearch.quant.fakequant import round_ste

    u = round_ste((x - beta) / s)
    inside = (u.detach() >= qmin) & (u.detach() <= qmax)
    q = torch.where(inside, u, torch.clamp(u.detach(), qmin, qmax))
    return q * s + beta


@settings(max_examples=30, deadline=None)
@given(bits=bits_st, seed=seed_st, shift=st.floats(-4, 4))
def test_quantizer_offset_is_lsq_plus(bits, seed, shift):
    # The quantizer's offset beta (tensor units) gets LSQ+'s gradients, scale too (LSQ factor aside)
    q = ElasticQuantizer("activation")
    form = QuantForm(bits, "per_tensor", False)
    x = (_x(seed, (8, 4, 3, 3), 1.0) + shift).double()
    q = q.double()
    q.calibrate(x.float().double(), forms=[form])
    q.set_form(form)
    with torch.no_grad():
        q.offset_pt_asym[:, bits - 2] += 0.37  # off the calibrated value, any real number
    gout = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q(x).backward(gout)
    qmin, qmax = grid_for(form, q.nonneg)
    s = q.scale_pt_asym.detach()[0, bits - 2].clone().requires_grad_(True)
    b = q.offset_pt_asym.detach()[0, bits - 2].clone().requires_grad_(True)
    ref = _lsq_plus(x, s, b, qmin, qmax)
    assert torch.allclose(q(x), ref.detach(), atol=1e-9)
    ref.backward(gout)
    factor = lsq_grad_factor(x[0].numel(), qmax)
    assert q.offset_pt_asym.grad[0, bits - 2].item() == pytest.approx(b.grad.item() * factor, rel=1e-6, abs=1e-9)
    assert q.scale_pt_asym.grad[0, bits - 2].item() == pytest.approx(s.grad.item() * factor, rel=1e-6, abs=1e-9)


def test_offset_converges_on_a_shifted_distribution():
    # LSQ+ offsets learn: a 4-bit affine quantizer calibrated on N(0, 1) is fed N(3, 1) data; training scale and
    # offset on the reconstruction error moves the zero point by many grid steps and recovers the error that a
    # quantizer calibrated on the shifted data has.
    g = torch.Generator().manual_seed(0)
    form = QuantForm(4, "per_tensor", False)
    q = ElasticQuantizer("activation")
    q.calibrate(torch.randn(4096, generator=g) - 0.01, forms=[form])  # signed grid, fitted to N(0, 1)
    q.set_form(form)
    _, z0 = q.qparams(form)
    z0 = float(z0.detach())
    data = torch.randn(20000, generator=g) + 3.0
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    for step in range(600):
        x = data[(step * 256) % 19744:][:256]
        loss = ((q(x) - x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, z1 = q.qparams(form)
    ref = ElasticQuantizer("activation")
    ref.nonneg = q.nonneg
    ref.calibrate(data, forms=[form])
    ref.nonneg = q.nonneg
    ref.set_form(form)
    with torch.no_grad():
        err_learned = float(((q(data) - data) ** 2).mean())
        err_ref = float(((ref(data) - data) ** 2).mean())
    z1 = z1.detach()
    assert abs(float(z1) - z0) > 3  # moved by more than 3 grid steps (the old grid-unit offsets moved < 1)
    assert float(z1) < z0  # the grid moved up to the data: z = -beta/s falls
    assert err_learned < 1.5 * err_ref


def test_old_state_dicts_with_grid_zero_points_load():
    q = ElasticQuantizer("activation")
    q.calibrate(torch.rand(1000) * 2 + 0.5)
    form = QuantForm(4, "per_tensor", False)
    s, z = q.qparams(form)
    sd = q.state_dict()
    old = {k: v for k, v in sd.items() if not k.startswith("offset_") and k != "_extra_state"}
    old["zp_pt_asym"] = torch.zeros(1, 7)
    old["zp_pt_asym"][0, 2] = z.reshape(())
    old["nonneg"] = torch.tensor(True)
    r = ElasticQuantizer("activation")
    r.load_state_dict(old)
    s2, z2 = r.qparams(form)
    assert r.nonneg is True
    assert torch.allclose(s2, s)
    assert torch.allclose(z2, z, atol=1e-5)


def test_nonneg_is_a_python_flag_kept_in_the_state_dict():
    q = ElasticQuantizer("activation")
    q.calibrate(torch.rand(100))
    assert q.nonneg is True
    r = ElasticQuantizer("activation")
    r.load_state_dict(q.state_dict())
    assert r.nonneg is True


def test_round_offsets_snaps_to_the_integer_grid():
    q = ElasticQuantizer("weight", 3)
    w = torch.randn(3, 2, 3, 3) + 0.4
    form = QuantForm(4, "per_channel", False)
    q.calibrate(w, forms=[form])
    _, z = q.qparams(form)
    assert not torch.allclose(z, z.round())
    q.round_offsets(form)
    _, z2 = q.qparams(form)
    assert torch.allclose(z2, z.round(), atol=1e-5)


@pytest.mark.parametrize("per_channel", [True, False])
def test_channels_last_input_keeps_its_layout_and_values(per_channel):
    """What a compiled graph hands the op next to a conv: outputs in x's own strides, the same values and gradients
    as the contiguous tensor's (the dot products read both in memory order)."""
    from quantsearch.quant.fakequant import fake_quant

    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 3, 5, 5, generator=g)
    shape = (1, 3, 1, 1) if per_channel else ()
    results = []
    for x in (base.clone(), base.clone().to(memory_format=torch.channels_last)):
        x.requires_grad_(True)
        scale = torch.full(shape, 0.25, requires_grad=True)
        zp = torch.full(shape, 1.6, requires_grad=True)
        out = fake_quant(x, scale, zp, 0, 15)
        assert out.stride() == x.stride()
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        results.append((out.detach().contiguous(), x.grad.contiguous(), scale.grad, zp.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("view", ["channels_slice", "strided_rows", "one_channel"])
def test_non_dense_and_ambiguous_layouts_match_the_reference(view):
    """A view whose layout differs from the outputs' (a channel slice of a channels-last tensor reads as
    channels-last outputs over a non-dense x): values and all gradients as the autograd reference computes them."""
    from quantsearch.quant.fakequant import fake_quant_reference

    g = torch.Generator().manual_seed(1)
    base = torch.randn(2, 6, 4, 4, generator=g).to(memory_format=torch.channels_last)
    x0 = {"channels_slice": base[:, :3], "strided_rows": base[:, :, ::2],
          "one_channel": base[:, :1].contiguous(memory_format=torch.channels_last)}[view]
    results = []
    for fn in (fake_quant, fake_quant_reference):
        x = x0.detach().clone(memory_format=torch.preserve_format) if fn is fake_quant_reference else x0.detach()
        x = x.requires_grad_(True)
        scale = torch.full((), 0.2, requires_grad=True)
        zp = torch.full((), 1.4, requires_grad=True)
        out = fn(x, scale, zp, 0, 15)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        results.append((out.detach(), x.grad, scale.grad, zp.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bool_mask_backward_equals_float_mask_backward():
    """Off the CPU the clip mask stays bool (less memory): the backward selects where the CPU multiplies."""
    from quantsearch.quant.fakequant import _backward, _forward_with_mask

    g = torch.Generator().manual_seed(2)
    x, grad = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    scale, zq = torch.full((1, 4, 1, 1), 0.3), torch.full((1, 4, 1, 1), 2.5)
    out, mask = _forward_with_mask(x, scale, zq, 0, 15)
    assert mask.dtype == x.dtype
    by_float = _backward(grad, x, out, mask, scale, True)
    by_bool = _backward(grad, x, out, mask.bool(), scale, True)
    for a, b in zip(by_float, by_bool, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
