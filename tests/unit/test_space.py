import numpy as np
import pytest
import torch
from quantsearch.errors import ConfigError
from quantsearch.quant import QuantForm, QuantPolicy, convert, get_profile, list_profiles
from quantsearch.quant.forms import LayerConfig
from quantsearch.space import SearchSpace, SubnetConfig, layer_costs, parse_uniform, subnet_cost
from torch import nn


def _toy():
    return nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 1, 1, groups=4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(64, 3))


@pytest.fixture
def qtoy():
    return convert(_toy(), QuantPolicy(), torch.randn(1, 1, 8, 8))


def test_subnet_config_json_round_trip_hash_and_summary(qtoy):
    space = SearchSpace.for_model(qtoy, get_profile("generic"))
    cfg = space.random(np.random.default_rng(0))
    again = SubnetConfig.from_json(cfg.to_json())
    assert again == cfg
    assert hash(again) == hash(cfg)
    assert len({cfg, again}) == 1
    assert "3 layers" in cfg.summary()
    assert list(cfg) == ["0", "2", "5"]


def test_profiles_and_spaces(qtoy):
    assert {"generic", "tensorrt-int8", "tflite-int8", "low-bit-accelerator"} <= set(list_profiles())
    trt = SearchSpace.for_model(qtoy, get_profile("tensorrt-int8"))
    assert trt.max_config() == trt.min_config()
    assert trt.contains(trt.max_config())
    with pytest.raises(ConfigError, match="not in profile"):
        trt.uniform(4, 4)
    low = SearchSpace.for_model(qtoy, get_profile("low-bit-accelerator"))
    rng = np.random.default_rng(1)
    for _ in range(20):
        cfg = low.random(rng)
        assert low.contains(cfg)
        assert all(c.weight.bits in (2, 4, 8) for c in cfg.values())
        assert cfg["0"].weight.bits == 8
        assert cfg["5"].activation.bits == 8
    generic = SearchSpace.for_model(qtoy, get_profile("generic"))
    assert not low.contains(generic.uniform(3, 3))
    with pytest.raises(ConfigError, match="unknown backend profile"):
        get_profile("tensorrt")


def test_parse_uniform():
    w, a = parse_uniform("uniform:W4A2")
    assert (w.bits, a.bits, w.per_channel, a.symmetric) == (4, 2, True, False)
    with pytest.raises(ConfigError):
        parse_uniform("W9A9")
    with pytest.raises(ConfigError):
        parse_uniform("four bits")


def test_cost_model_matches_hand_computation(qtoy):
    costs = {c.name: c for c in layer_costs(qtoy, (1, 8, 8))}
    # conv 1->4, 3x3, stride 2 on 8x8: 4x4x4 outputs x 9 MACs; depthwise 4 groups: 64 outputs x 9; fc 64x3
    assert costs["0"].macs == 576
    assert costs["2"].macs == 576
    assert costs["5"].macs == 192
    assert (costs["0"].params, costs["2"].params, costs["5"].params) == (36, 36, 192)
    assert (costs["0"].in_numel, costs["2"].in_numel, costs["5"].in_numel) == (64, 64, 64)
    w8a8, w4a2 = LayerConfig(QuantForm(8), QuantForm(8)), LayerConfig(QuantForm(4), QuantForm(2))
    cfg = SubnetConfig((("0", w8a8), ("2", w4a2), ("5", w8a8)))
    c = subnet_cost(list(costs.values()), cfg)
    assert c.bitops == 576 * 64 + 576 * 8 + 192 * 64
    assert c.weight_bytes == (36 * 8 + 36 * 4 + 192 * 8) / 8
    assert c.act_bytes_peak == 64
    assert c.act_bytes_total == 64 + 16 + 64
    assert subnet_cost(list(costs.values()), None).bitops == (576 + 576 + 192) * 32 * 32
