"""Every stage runs where the model is: placement on the meta device, and no host synchronisation in forward."""

from __future__ import annotations

import contextlib

import pytest
import torch
from quantsearch.device import model_device, resolve_device
from quantsearch.dqss import ActMix, WeightMix
from quantsearch.errors import ConfigError
from quantsearch.models import create
from quantsearch.quant import QuantForm, QuantPolicy, convert
from quantsearch.quant.convert import quant_layers
from quantsearch.space import model_uniform, set_config

FORMS = [(QuantForm(b, g, ws), QuantForm(b, "per_tensor", asym))
         for b in (8, 4, 2) for g in ("per_channel", "per_tensor") for ws in (True, False) for asym in (True, False)]


@contextlib.contextmanager
def no_host_sync():
    """Make reading a tensor's value on the host (bool/float/int/item) raise, as a GPU forward must not sync."""
    def boom(*_a, **_k):
        raise AssertionError("host synchronisation in a forward pass")

    saved = {n: getattr(torch.Tensor, n) for n in ("__bool__", "__float__", "__int__", "item", "tolist")}
    try:
        for n in saved:
            setattr(torch.Tensor, n, boom)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


def test_the_guard_bites():
    with no_host_sync(), pytest.raises(AssertionError, match="host synchronisation"):
        bool(torch.ones(()) > 0)


@pytest.mark.parametrize("name", ["resnet8", "mobilenetv2-tiny"])
def test_converted_model_forward_and_backward_never_sync(name):
    torch.manual_seed(0)
    x = torch.randn(4, 1, 16, 16)
    q = convert(create(name, 4, 1), QuantPolicy(), x[:2])
    from quantsearch.quant import calibrate_model

    calibrate_model(q, [x])
    for wf, af in FORMS:
        set_config(q, model_uniform(q, wf, af))
        with no_host_sync():
            q(x).sum().backward()


def test_dqss_mixture_forward_and_backward_never_sync():
    torch.manual_seed(0)
    conv = convert(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)), QuantPolicy(pin_first_last=False), None)[0]
    af, wf = QuantForm(4, "per_tensor", False), QuantForm(4, "per_channel", False)
    act = ActMix(af, False, [torch.tensor([0.1]), torch.tensor([0.2])], [torch.tensor([3.0]), torch.tensor([1.0])], 1.0)
    w = WeightMix(wf, [torch.full((8,), 0.01), torch.full((8,), 0.02)], [torch.zeros(8), torch.ones(8)], 1.0)
    conv.swap_quantizers(act, w)  # what DQSS does while it searches
    act.scales.requires_grad_(True)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    with no_host_sync():
        conv(x).sum().backward()
    assert act.alpha.grad is not None
    assert x.grad is not None


def test_conversion_places_every_table_on_the_model_device():
    # the meta device holds shapes only: anything created on the CPU by mistake shows up as a cpu tensor
    x = torch.randn(2, 1, 16, 16, device="meta")
    for name in ("resnet8", "mobilenetv2-tiny"):
        q = convert(create(name, 4, 1).to("meta"), QuantPolicy(), x)
        assert {t.device.type for t in (*q.parameters(), *q.buffers())} == {"meta"}
        set_config(q, model_uniform(q, QuantForm(4, "per_channel", False), QuantForm(4, "per_tensor", False)))
        assert q(x).device.type == "meta"
        assert model_device(q).type == "meta"
        layer = next(iter(quant_layers(q).values()))
        s, z = layer.wq.qparams(QuantForm(4, "per_channel", False))
        assert s.device.type == "meta"
        assert z.device.type == "meta"


def test_mixers_keep_their_zero_points_as_buffers():
    af, wf = QuantForm(4, "per_tensor", False), QuantForm(4, "per_channel", False)
    act = ActMix(af, False, [torch.tensor([0.1]), torch.tensor([0.2])], [torch.tensor([3.0]), torch.tensor([1.0])], 1.0)
    w = WeightMix(wf, [torch.full((8,), 0.01), torch.full((8,), 0.02)], [torch.zeros(8), torch.ones(8)], 1.0)
    act, w = act.to("meta"), w.to("meta")
    assert "zps" in act.state_dict()
    assert "zps" in w.state_dict()
    assert act.zps.device.type == "meta"
    assert w.zps.device.type == "meta"


def test_calibrators_create_constants_on_the_input_device():
    from quantsearch.quant import get_calibrator
    from quantsearch.quant.kl import kl_divergences

    h = torch.rand(256, dtype=torch.float64, device="meta")
    cuts, kl = kl_divergences(h, 16, 32)
    assert cuts.device.type == "meta"
    assert kl.device.type == "meta"
    x = torch.randn(8, 50, device="meta")
    for name in ("maxabs", "mse"):
        s, z = get_calibrator(name).scale_offset(x, QuantForm(4, "per_channel", False))
        assert s.device.type == "meta"
        assert z.device.type == "meta"


def test_device_setting():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="not one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")
