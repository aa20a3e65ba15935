import numpy as np
import pytest
from quantsearch.errors import ConfigError
from quantsearch.quant import get_profile
from quantsearch.quant.forms import LayerConfig, QuantForm
from quantsearch.space import SearchSpace, SubnetConfig, net_forms
from quantsearch.space.genome import Genome

NAMES = ("conv0", "l1", "l2", "l3", "fc")
PINS = (("conv0", 8), ("fc", 8))


def _space(profile: str, pinned=PINS) -> SearchSpace:
    return SearchSpace(NAMES, get_profile(profile), pinned)


def test_layout_form_gene_then_two_bit_genes_per_free_layer():
    g = Genome.for_space(_space("generic"))
    assert g.free == ("l1", "l2", "l3")
    assert g.n_var == 7
    assert g.xl.tolist() == [0] * 7
    assert g.xu.tolist() == [7, 6, 6, 6, 6, 6, 6]  # 2 granularities x 2 x 2 symmetries; bits 2..8
    first = Genome.for_space(_space("generic"), forms="first")
    assert first.xu[0] == 0
    assert first.forms == (net_forms(_space("generic"))[0],)
    low = Genome.for_space(_space("low-bit-accelerator"))
    assert low.xu.tolist() == [1, 2, 2, 2, 2, 2, 2]
    assert Genome.for_space(_space("generic", pinned=())).n_var == 11
    with pytest.raises(ConfigError, match="'all' or 'first'"):
        Genome.for_space(_space("generic"), forms="some")


@pytest.mark.parametrize("profile", ["generic", "tensorrt-int8", "low-bit-accelerator"])
@pytest.mark.parametrize("forms", ["all", "first"])
def test_every_random_genome_decodes_inside_the_space_and_round_trips(profile, forms):
    space = _space(profile)
    g = Genome.for_space(space, forms)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        x = rng.integers(g.xl, g.xu + 1)
        cfg = g.decode(x)
        assert space.contains(cfg)
        assert cfg["conv0"].weight.bits == cfg["fc"].activation.bits == 8  # pinned layers keep their bits
        np.testing.assert_array_equal(g.encode(cfg), x)
        seen.add(cfg)
    if profile == "tensorrt-int8":
        assert len(seen) == 1 == int(np.prod(g.xu + 1))  # one form, one bit-width: a single config
    else:
        assert len(seen) > 100


def test_distinct_genomes_decode_to_distinct_configs():
    g = Genome.for_space(_space("low-bit-accelerator"))
    grids = np.stack(np.meshgrid(*[np.arange(u + 1) for u in g.xu], indexing="ij"), -1).reshape(-1, g.n_var)
    configs = {g.decode(x) for x in grids}
    assert len(configs) == len(grids) == 2 * 9**3


def test_decode_rejects_genes_out_of_bounds():
    g = Genome.for_space(_space("generic"))
    with pytest.raises(ValueError, match="outside the integer bounds"):
        g.decode(np.array([0, 7, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="7 genes"):
        g.decode(np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="outside"):
        g.decode(np.array([0, 0.5, 0, 0, 0, 0, 0]))


def test_encode_refuses_mixed_forms_other_forms_and_configs_outside_the_space():
    space = _space("generic")
    g = Genome.for_space(space)
    cfg = g.decode(np.array([0, 2, 2, 2, 2, 2, 2]))
    w, a = cfg["l2"].weight, cfg["l2"].activation
    other_form = QuantForm(w.bits, "per_tensor", w.symmetric)
    mixed = SubnetConfig(tuple((n, LayerConfig(other_form, a) if n == "l2" else c) for n, c in cfg.layers))
    assert space.contains(mixed)
    with pytest.raises(ConfigError, match="mixes per-layer forms") as err:
        g.encode(mixed)
    assert "\n" not in str(err.value)
    pinned_wrong = SubnetConfig(tuple((n, LayerConfig(c.weight.with_bits(4), c.activation) if n == "fc" else c)
                                      for n, c in cfg.layers))
    with pytest.raises(ConfigError, match=r"not in the search space .*layer 'fc'"):
        g.encode(pinned_wrong)
    with pytest.raises(ConfigError, match="missing layers"):
        g.encode(SubnetConfig(cfg.layers[:-1]))
    last_form = g.decode(np.array([7, 0, 0, 0, 0, 0, 0]))
    with pytest.raises(ConfigError, match="not searched here"):
        Genome.for_space(space, "first").encode(last_form)
    low = Genome.for_space(_space("low-bit-accelerator"))
    with pytest.raises(ConfigError, match="not in the search space"):
        low.encode(space.uniform(3, 3))


@pytest.mark.parametrize("profile", ["generic", "tensorrt-int8", "low-bit-accelerator"])
def test_uniform_genomes_are_every_wbab_in_every_form(profile):
    space = _space(profile)
    g = Genome.for_space(space)
    xs, labels = g.uniform_genomes(), g.uniform_labels()
    bits = sorted(set(space.profile.weight_bits) & set(space.profile.act_bits))
    assert xs.shape == (len(g.forms) * len(bits), g.n_var) == (len(labels), g.n_var)
    expected = {space.uniform(b, b, f.granularity, f.w_symmetric, f.a_symmetric) for f in g.forms for b in bits}
    assert {g.decode(x) for x in xs} == expected
    assert labels[0].startswith(f"W{bits[0]}A{bits[0]}")
    if len(g.forms) == 1:
        assert labels == [f"W{b}A{b}" for b in bits]
    else:
        assert labels[0] == f"W{bits[0]}A{bits[0]} {g.forms[0].label()}"
