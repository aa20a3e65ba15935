import json
import re

import numpy as np
import pytest
import torch
from quantsearch.errors import ConfigError
from quantsearch.quant import QuantPolicy, convert, get_profile
from quantsearch.quant.forms import LayerConfig, QuantForm
from quantsearch.space import SearchSpace, SubnetConfig, net_forms
from quantsearch.space.encoding import FeatureEncoder
from torch import nn

LAYERS = tuple(f"l{i}" for i in range(6))
PINS = (("l0", 8), ("l5", 8))


def _space(profile="generic"):
    return SearchSpace(LAYERS, get_profile(profile), PINS)


def _row(enc, cfg):
    return dict(zip(enc.feature_names(), enc.encode([cfg])[0], strict=True))


@pytest.mark.parametrize(("profile", "dim"), [
    # 8 net forms + 4 free layers x (7 w + 7 a bits) + 6 layers x (2 granularities + 2 w-sym + 2 a-sym)
    ("generic", 8 + 4 * 14 + 6 * 6),
    # 2 net forms (only activation symmetry varies) + 4 x (3 + 3 bits) + 6 x 2 activation-symmetry bits
    ("low-bit-accelerator", 2 + 4 * 6 + 6 * 2),
    # one form, one bit-width: nothing per-layer about forms
    ("tensorrt-int8", 1 + 4 * 2),
])
def test_dims_follow_the_profile(profile, dim):
    enc = FeatureEncoder.for_space(_space(profile))
    assert enc.dim == dim
    assert len(enc.feature_names()) == dim
    assert len(set(enc.feature_names())) == dim
    assert enc.encode([_space(profile).max_config()]).shape == (1, dim)
    assert enc.encode([_space(profile).max_config()]).dtype == np.float32


def test_uniform_config_sets_its_form_bits_and_layer_forms():
    space = _space()
    enc = FeatureEncoder.for_space(space)
    cfg = space.uniform(4, 2, "per_tensor", False, True)
    row = _row(enc, cfg)
    on = {k for k, v in row.items() if v == 1.0}
    assert set(row.values()) <= {0.0, 1.0}
    # one form + (w, a) bits of 4 free layers + 3 form one-hots on each of 6 layers
    assert len(on) == 1 + 4 * 2 + 6 * 3
    assert "form=pt-asym/sym" in on
    assert {"l1.w4", "l1.a2", "l1.pt", "l1.w-asym", "l1.a-sym", "l0.pt", "l5.a-sym"} <= on
    assert not {"l1.w2", "l1.a4", "l1.pc", "l1.w-sym", "l1.a-asym"} & on
    # every network-wide form lights exactly its own column
    for form in net_forms(space):
        r = _row(enc, space.uniform(3, 3, form.granularity, form.w_symmetric, form.a_symmetric))
        assert [k for k, v in r.items() if k.startswith("form=") and v] == [f"form={form.label()}"]


def test_mixed_forms_get_no_form_bits_but_keep_per_layer_forms():
    space = _space()
    enc = FeatureEncoder.for_space(space)
    base = space.uniform(5, 5, "per_channel", True, False)
    layers = dict(base.layers)
    layers["l2"] = LayerConfig(QuantForm(5, "per_tensor", True), layers["l2"].activation)
    mixed = SubnetConfig.from_mapping(layers)
    assert enc.net_form(mixed) is None
    row = _row(enc, mixed)
    assert not any(v for k, v in row.items() if k.startswith("form="))
    assert sum(row.values()) == 4 * 2 + 6 * 3
    assert row["l2.pt"] == 1.0
    assert row["l1.pc"] == 1.0


def test_pinned_layers_carry_no_bit_features():
    enc = FeatureEncoder.for_space(_space())
    names = enc.feature_names()
    assert enc.free == ("l1", "l2", "l3", "l4")
    assert not [n for n in names if re.fullmatch(r"l[05]\.[wa]\d", n)]
    assert "l0.w-sym" in names  # its form still varies per layer
    assert "l1.w2" in names
    assert "l4.a8" in names
    # a restricted profile offers no per-layer forms: pinned layers then have no columns at all
    trt = FeatureEncoder.for_space(_space("tensorrt-int8"))
    assert not [n for n in trt.feature_names() if n.startswith(("l0.", "l5."))]


def test_random_configs_one_hot_per_group():
    space = _space()
    enc = FeatureEncoder.for_space(space)
    rng = np.random.default_rng(0)
    X = enc.encode([space.random(rng) for _ in range(50)])
    names = enc.feature_names()
    for layer in enc.free:
        for kind in ("w", "a"):
            cols = [i for i, n in enumerate(names) if re.fullmatch(rf"{layer}\.{kind}\d", n)]
            assert len(cols) == 7
            assert np.all(X[:, cols].sum(axis=1) == 1)


def test_encoding_ignores_the_configs_layer_order():
    space = _space()
    enc = FeatureEncoder.for_space(space)
    cfg = space.random(np.random.default_rng(3))
    backwards = SubnetConfig(tuple(reversed(cfg.layers)))
    np.testing.assert_array_equal(enc.encode([cfg]), enc.encode([backwards]))


def test_dict_round_trip_rebuilds_the_same_encoder():
    space = _space("low-bit-accelerator")
    enc = FeatureEncoder.for_space(space)
    again = FeatureEncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    assert again == enc
    cfgs = [space.random(np.random.default_rng(s)) for s in range(5)]
    np.testing.assert_array_equal(again.encode(cfgs), enc.encode(cfgs))
    with pytest.raises(ConfigError, match="not a valid feature encoder"):
        FeatureEncoder.from_dict({**enc.to_dict(), "format": 99})
    with pytest.raises(ConfigError, match="not a valid feature encoder"):
        FeatureEncoder.from_dict({"format": 1})


def test_configs_of_another_space_raise_one_line():
    space = _space()
    enc = FeatureEncoder.for_space(space)
    cfg = space.max_config()
    renamed = SubnetConfig(tuple(("x9" if n == "l3" else n, c) for n, c in cfg.layers))
    with pytest.raises(ConfigError, match=r"missing \['l3'\], unknown \['x9'\]") as info:
        enc.encode([cfg, renamed])
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="does not match"):
        enc.encode([SubnetConfig(cfg.layers[:-1])])
    low = FeatureEncoder.for_space(_space("low-bit-accelerator"))
    with pytest.raises(ConfigError, match="weight bits 3"):
        low.encode([space.uniform(3, 4)])
    trt = FeatureEncoder.for_space(_space("tensorrt-int8"))
    with pytest.raises(ConfigError, match="form outside"):
        trt.encode([space.uniform(8, 8, "per_tensor", False, False)])


def test_for_space_of_a_converted_model():
    toy = nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 1, 1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(64, 3))
    space = SearchSpace.for_model(convert(toy, QuantPolicy(), torch.randn(1, 1, 8, 8)), get_profile("generic"))
    enc = FeatureEncoder.for_space(space)
    assert enc.layer_names == ("0", "2", "5")
    assert enc.free == ("2",)  # first and last pinned
    assert enc.dim == 8 + 14 + 3 * 6
    assert enc.encode([space.min_config()]).sum() == 1 + 2 + 3 * 3
