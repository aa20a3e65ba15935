import pytest
import torch
from quantsearch.models import create
from quantsearch.quant import (
    ElasticQuantizer,
    MaxAbsCalibrator,
    MSECalibrator,
    QuantConv2d,
    QuantForm,
    QuantLinear,
    QuantPolicy,
    calibrate_model,
    convert,
    quant_layers,
)
from quantsearch.quant.forms import LayerConfig
from quantsearch.space import get_config, model_uniform, set_config
from torch import nn


def test_tables_exist_eagerly_for_every_form():
    q = ElasticQuantizer("weight", 5)
    names = dict(q.named_parameters())
    assert names["scale_pc_sym"].shape == (5, 7)
    assert names["offset_pc_asym"].shape == (5, 7)
    assert names["scale_pt_sym"].shape == (1, 7)
    assert "offset_pt_asym" in names
    a = ElasticQuantizer("activation")
    assert set(dict(a.named_parameters())) == {"scale_pt_sym", "scale_pt_asym", "offset_pt_asym"}
    with pytest.raises(ValueError, match="per-tensor"):
        a.set_form(QuantForm(4, "per_channel"))


def test_state_dict_round_trips_exactly():
    w = torch.randn(8, 4, 3, 3)
    q = ElasticQuantizer("weight", 8)
    q.calibrate(w)
    fresh = ElasticQuantizer("weight", 8)
    fresh.load_state_dict(q.state_dict())
    for f in (QuantForm(3, "per_channel", False), QuantForm(6, "per_tensor", True)):
        q.set_form(f)
        fresh.set_form(f)
        assert torch.equal(q(w), fresh(w))


def test_mse_init_beats_maxabs_at_low_bits():
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((20000,))  # heavy tails: max|x| is a poor clip
    err = {}
    for cal in (MaxAbsCalibrator(), MSECalibrator()):
        q = ElasticQuantizer("activation")
        q.calibrate(x, cal)
        q.set_form(QuantForm(3, "per_tensor", True))
        err[cal.name] = float(((q(x).detach() - x) ** 2).mean())
    assert err["mse"] < err["maxabs"] / 2


def test_activation_signedness_decided_at_calibration():
    q = ElasticQuantizer("activation")
    q.calibrate(torch.rand(1000) * 4)
    assert q.nonneg is True
    q.set_form(QuantForm(4, "per_tensor", True))
    y = q(torch.rand(1000) * 4)
    assert y.min() >= 0
    assert len(y.unique()) > 8


def test_switching_bits_selects_columns():
    w = torch.randn(4, 8)
    q = ElasticQuantizer("weight", 4)
    q.calibrate(w)
    outs = {}
    for b in (2, 8):
        q.set_form(QuantForm(b, "per_channel", True))
        outs[b] = q(w)
    assert ((outs[8] - w) ** 2).mean() < ((outs[2] - w) ** 2).mean() / 50
    q.set_form(None)
    assert torch.equal(q(w), w)


def _toy():
    return nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 1, 1, groups=4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(64, 3))


def test_convert_swaps_layers_pins_first_last_and_keeps_outputs_in_float():
    m = _toy()
    x = torch.randn(2, 1, 8, 8)
    q = convert(m, QuantPolicy(), x)
    assert isinstance(m[0], nn.Conv2d)
    assert not isinstance(m[0], QuantConv2d)
    layers = quant_layers(q)
    assert list(layers) == ["0", "2", "5"]
    assert isinstance(layers["5"], QuantLinear)
    assert layers["2"].groups == 4
    assert [layers[n].pinned for n in layers] == [True, False, True]
    assert torch.allclose(q(x), m(x), atol=1e-6)  # float until a config is set


def test_convert_policy_without_pinning_and_skip():
    q = convert(_toy(), QuantPolicy(pin_first_last=False, skip=("5",)), torch.randn(1, 1, 8, 8))
    assert list(quant_layers(q)) == ["0", "2"]
    assert not any(lay.pinned for lay in quant_layers(q).values())


def test_set_and_get_config():
    x = torch.randn(4, 1, 8, 8)
    q = convert(_toy(), QuantPolicy(), x)
    calibrate_model(q, [x])
    cfg = model_uniform(q, QuantForm(4, "per_channel", True), QuantForm(4, "per_tensor", False))
    set_config(q, cfg)
    assert get_config(q) == cfg
    assert cfg["0"].weight.bits == 8
    assert cfg["2"].weight.bits == 4
    assert not torch.allclose(q(x), _toy()(x))
    bad = type(cfg)(cfg.layers[:-1])
    with pytest.raises(Exception, match="does not match"):
        set_config(q, bad)


MODELS = ["resnet8", "mobilenetv2-tiny", "tv:resnet18", "tv:mobilenet_v2", "tv:efficientnet_b0"]


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("name", MODELS)
def test_convert_forward_backward_real_models(name, size):
    torch.manual_seed(0)
    m = create(name, 10, 1 if size == 28 else 3)
    x = torch.randn(4, 1 if size == 28 else 3, size, size)
    q = convert(m, QuantPolicy(), x)
    n_quant = len(quant_layers(q))
    assert n_quant == sum(isinstance(mod, (nn.Conv2d, nn.Linear)) for mod in m.modules())
    calibrate_model(q, [x], MaxAbsCalibrator())  # the fast calibrator: this test is about the plumbing
    set_config(q, model_uniform(q, QuantForm(4, "per_channel", True), QuantForm(4, "per_tensor", False)))
    q.train()
    out = q(x)
    out.sum().backward()
    layer = next(iter(quant_layers(q).values()))
    assert out.shape == (4, 10)
    assert layer.weight.grad is not None
    assert layer.aq.scale_pt_asym.grad is not None
    assert layer.wq.scale_pc_sym.grad is not None


def test_layer_config_rejects_per_channel_activation():
    with pytest.raises(ValueError, match="per-tensor"):
        LayerConfig(QuantForm(4), QuantForm(4, "per_channel"))
