"""The public Python API (`import quantsearch as qs`): each verb's contract on any model and batches, and the README's
'Python API' section showing exactly the snippets tests/integration/test_readme_api.py runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import quantsearch as qs
import torch
from torch import nn

SNIPPETS = Path(__file__).resolve().parents[1] / "integration" / "readme_api"
README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_blocks() -> list[str] | None:
    text = README.read_text()
    m = re.search(r"^## Python API\n(.*?)(?=^## )", text, flags=re.M | re.S)
    if m is None:
        return None
    return [b.strip() for b in re.findall(r"```python\n(.*?)```", m.group(1), flags=re.S)]


def test_readme_python_api_is_what_these_tests_run():
    blocks = _readme_blocks()
    if blocks is None:
        pytest.skip("README.md has no '## Python API' section yet")
    snippets = [(SNIPPETS / f).read_text().strip() for f in ("ptq_dqss.py", "supernet.py", "search.py")]
    assert blocks[:3] == snippets, "README's Python API snippets differ from tests/unit/api_snippets/*.py"
    assert all(len(s.splitlines()) <= 15 for s in snippets)
    snippets = [(SNIPPETS / f).read_text().strip() for f in ("ptq_dqss.py", "supernet.py", "search.py")]
    assert blocks[:3] == snippets, "README's Python API snippets differ from tests/integration/readme_api/*.py"


def test_snippets_fit_in_15_lines():
    for f in ("ptq_dqss.py", "supernet.py", "search.py"):
        assert len((SNIPPETS / f).read_text().strip().splitlines()) <= 15, f


# --- each verb's contract, on a small trained model and synthetic batches ---


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic):
    """resnet8 trained briefly on the synthetic set (float), its val images as a DataLoader and as a list."""
    from quantsearch.config import JobSpec
    from quantsearch.data import ArrayBatches, PreparedData, split_train_val
    from quantsearch.space import build_model_from_checkpoint
    from quantsearch.train import load_checkpoint, train_fp32

    tr, va = split_train_val(synthetic.train, 256, 0)
    data = PreparedData(synthetic, tr, va, synthetic.test)
    spec = JobSpec.model_validate({"device": "cpu", "data": {"name": "synthetic"},
                                   "training": {"epochs": 2, "batch_size": 64}})
    res = train_fp32(spec, data, tmp_path_factory.mktemp("api"), progress=False)
    model = build_model_from_checkpoint(load_checkpoint(res.checkpoint)).eval()
    batches = list(ArrayBatches(data.train, 64, data.mean, data.std))
    val = list(ArrayBatches(data.val, 128, data.mean, data.std))
    return model, batches, val


def _loader(batches):
    xs, ys = zip(*batches, strict=True)
    ds = torch.utils.data.TensorDataset(torch.cat(xs), torch.cat(ys))
    return torch.utils.data.DataLoader(ds, batch_size=len(xs[0]))


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        torch.equal(sa[k], sb[k]) if torch.is_tensor(sa[k]) else sa[k] == sb[k] for k in sa)


def test_search_subnets_is_the_function_whatever_was_imported_first():
    import quantsearch.search.job  # noqa: F401 - binds quantsearch.search to the subpackage
    from quantsearch.search.nsga import search

    assert qs.search_subnets is search


def test_public_api_is_small_and_every_name_resolves():
    assert len(qs.__all__) <= 24  # one verb per stage (8), their settings, result and error types
    for name in qs.__all__:
        assert getattr(qs, name) is not None
    with pytest.raises(AttributeError, match=r"no attribute 'quantise'"):
        qs.quantise  # noqa: B018


def test_quantize_leaves_the_model_and_takes_every_kind_of_config(trained):
    from quantsearch.errors import ConfigError
    from quantsearch.quant import QuantConv2d
    from quantsearch.space import get_config

    model, batches, _ = trained
    q = qs.quantize(model, "W4A4", example=batches[0])  # a whole (x, y) batch is a fine example
    assert not any(isinstance(m, QuantConv2d) for m in model.modules())
    cfg = get_config(q)
    assert cfg is not None
    assert {c.weight.bits for c in cfg.values()} == {4, 8}
    assert get_config(qs.quantize(model, "uniform:W4A4", batches[0][0])) == cfg
    pt = get_config(qs.quantize(model, qs.QuantTarget(config="W4A4", weight_granularity="per_tensor")))
    assert {c.weight.granularity for c in pt.values()} == {"per_tensor"}
    assert get_config(qs.quantize(model, cfg)) == cfg
    again = qs.quantize(q, "W8A8")  # a quantized model: a copy switched to the new config
    assert {c.weight.bits for c in get_config(again).values()} == {8}
    assert get_config(q) == cfg
    with pytest.raises(ConfigError, match=r"2..8"):
        qs.quantize(model, "W9A9")


def test_calibrate_takes_any_batches_and_keeps_accuracy(trained):
    from quantsearch.errors import ConfigError

    model, batches, val = trained
    fp32 = qs.evaluate(model, val).top1
    assert fp32 > 0.8
    a = qs.quantize(model, "W8A8", batches[0])
    qs.calibrate(a, _loader(batches), method="kl")  # a DataLoader of (x, y)
    b = qs.quantize(model, "W8A8", batches[0])
    qs.calibrate(b, [x for x, _ in batches], method="kl")  # a list of inputs x
    assert _same_state(a, b)
    assert qs.evaluate(a, val).top1 >= fp32 - 0.03  # W8A8 keeps the float accuracy
    c = qs.quantize(model, "W8A8", batches[0])
    qs.calibrate(c, batches, method="kl", calib_images=100)  # the first 100 images only
    d = qs.quantize(model, "W8A8", batches[0])
    qs.calibrate(d, [batches[0][0], batches[1][0][:36]], method="kl")
    assert _same_state(c, d)
    with pytest.raises(ConfigError, match=r"unknown calibration method 'entropy'.*torchao-minmax"):
        qs.calibrate(a, batches, method="entropy")
    with pytest.raises(ConfigError, match=r"quantize it first"):
        qs.calibrate(model, batches)


def test_calibrate_without_a_config_initialises_every_form(trained):
    from quantsearch.quant import QuantPolicy, convert, quant_layers
    from quantsearch.space import model_uniform, set_config

    model, batches, val = trained
    sn = convert(model, QuantPolicy(), batches[0][0])  # a float converted model, as a supernet starts
    qs.calibrate(sn, batches, method="mse", calib_images=128)
    assert all(layer.wq.calibrated and layer.aq.calibrated for layer in quant_layers(sn).values())
    set_config(sn, model_uniform(sn, qs.QuantForm(8, "per_channel", True), qs.QuantForm(8, "per_tensor", False)))
    assert qs.evaluate(sn, val).top1 >= qs.evaluate(model, val).top1 - 0.03


def test_dqss_search_returns_a_strategy_the_file_rebuilds(trained, tmp_path):
    from dataclasses import FrozenInstanceError

    from quantsearch.errors import ConfigError

    model, batches, val = trained
    q = qs.quantize(model, "W4A4", batches[0])
    settings = qs.DQSSSpec(iters=8, easyquant_steps=8)
    strategy = qs.dqss_search(q, [x for x, _ in batches], settings)  # PTQ needs no labels
    assert isinstance(strategy, qs.Strategy)
    assert strategy.mode == "ptq"
    assert len(strategy) == 10
    assert set(strategy.choices().values()) <= {(a, w) for a in settings.candidates for w in settings.candidates}
    with pytest.raises(FrozenInstanceError):
        strategy.mode = "qat"  # type: ignore[misc]
    again = qs.Strategy.load(strategy.save(tmp_path / "s.json"))
    assert again == strategy
    assert again.to_json() == strategy.to_json()
    x = val[0][0]
    with torch.no_grad():
        assert torch.equal(again.build(model, x).eval()(x), q.eval()(x))  # the deployed model, rebuilt exactly
    assert all(p.requires_grad for p in q.parameters())  # the search left the model trainable
    q2 = qs.quantize(model, "W4A4", x)
    before = {n: type(m) for n, m in q2.named_modules()}
    with pytest.raises(ConfigError, match=r"labels"):
        qs.dqss_search(q2, [x for x, _ in batches], qs.DQSSSpec(mode="qat", candidates=("maxabs", "mse")))
    assert {n: type(m) for n, m in q2.named_modules()} == before  # a failed search puts the quantizers back
    with pytest.raises(ConfigError, match=r"quantsearch.quantize"):
        qs.dqss_search(model, batches)


def test_dqss_search_qat_on_a_dataloader(trained):
    model, batches, val = trained
    q = qs.quantize(model, "W4A4", batches[0])
    losses = []
    settings = qs.DQSSSpec(mode="qat", search_epochs=0.5, finetune_epochs=0.5, easyquant_steps=4)
    strategy = qs.dqss_search(q, _loader(batches), settings, on_step=lambda i, loss: losses.append(loss))
    n = round(0.5 * len(batches))
    assert strategy.mode == "qat"
    assert strategy.search["search_steps"] == strategy.search["finetune_steps"] == n
    assert len(losses) == 2 * n
    assert qs.evaluate(q, val).top1 > 0.5
    for name, layer in strategy.items():  # the model holds what the strategy deploys: integer zero points
        if layer.activation_zero_point is not None:
            assert layer.activation_zero_point == round(layer.activation_zero_point), name


def test_train_supernet_and_extract_subnets(trained):
    from quantsearch.errors import ConfigError
    from quantsearch.space import get_config

    model, batches, val = trained
    settings = qs.SupernetSpec(epochs=1, n_random=1, calib_images=128, bn_images=128)
    supernet = qs.train_supernet(model, batches[:3], settings, val_batches=val, bn_batches=batches)
    assert isinstance(supernet, qs.Supernet)
    assert len(supernet.history) == 1
    assert {"loss_max", "loss_min", "val_acc_max", "val_acc_min"} <= set(supernet.history[0])
    w8 = supernet.subnet("W8A8", bn_batches=batches, bn_images=128)
    w2 = supernet.subnet("W2A2", bn_batches=batches, bn_images=128)
    assert w8 is not supernet.model
    assert {c.weight.bits for c in get_config(w8).values()} == {8}
    assert qs.evaluate(w8, val).top1 >= qs.evaluate(w2, val).top1 - 0.05
    cfg = supernet.config("W4A4")
    first = next(iter(cfg))
    with pytest.raises(ConfigError, match=r"not in this supernet's space"):  # the first layer is pinned at 8 bits
        supernet.subnet(qs.SubnetConfig.from_mapping({**cfg, first: cfg[next(iter(list(cfg)[1:]))]}))
    pt = supernet.subnet(qs.QuantTarget(config="W4A4", weight_granularity="per_tensor"))  # any form the space has
    assert {c.weight.granularity for c in get_config(pt).values()} == {"per_tensor"}
    assert not any(type(m).__name__.startswith("Quant") for m in model.modules())


def test_evaluate_takes_arraydata_or_batches(trained, synthetic):
    from quantsearch.data import ArrayBatches

    model, _, _ = trained
    a = qs.evaluate(model, synthetic.test, synthetic.mean, synthetic.std)
    b = qs.evaluate(model, ArrayBatches(synthetic.test, 100, synthetic.mean, synthetic.std))
    assert a == b
    with pytest.raises(TypeError, match=r"mean and std"):
        qs.evaluate(model, synthetic.test)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_every_verb_runs_on_cuda_with_cpu_batches(trained):
    import copy

    model, batches, val = trained
    model = copy.deepcopy(model).to("cuda")
    q = qs.quantize(model, "W4A4", batches[0])  # the example and every batch are moved to the model
    qs.calibrate(q, batches, method="kl")
    strategy = qs.dqss_search(q, batches, qs.DQSSSpec(iters=4, easyquant_steps=4))
    assert {t.device.type for t in (*q.parameters(), *q.buffers())} == {"cuda"}
    assert qs.evaluate(q, val).top1 > 0.5
    assert len(strategy) == 10
    sn = qs.train_supernet(model, batches[:2], qs.SupernetSpec(epochs=1, n_random=0, calib_images=64))
    assert qs.evaluate(sn.subnet("W8A8", bn_batches=batches), val).top1 > 0.5
