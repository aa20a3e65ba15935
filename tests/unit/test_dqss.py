import json

import pytest
import torch
from quantsearch import quantize
from quantsearch.config import DQSSSpec, JobSpec, QuantTarget
from quantsearch.data import ArrayBatches, PreparedData, split_train_val
from quantsearch.dqss import (
    Anneal,
    Strategy,
    build_from_strategy,
    dqss_search,
    mix_quant,
    naive_mixed_forward,
    run_dqss,
    shared_input_groups,
)
from quantsearch.errors import ConfigError
from quantsearch.models import create
from quantsearch.quant import QuantForm, QuantPolicy, convert, grid_for
from quantsearch.space import load_model
from quantsearch.train import evaluate, load_checkpoint, train_fp32
from torch import nn


@pytest.mark.parametrize(("per_channel", "asym"), [(True, False), (False, True)])
def test_efficient_mixed_layer_equals_naive_n_squared(per_channel, asym):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, padding=1)
    n = 4
    x0 = torch.randn(3, 6, 9, 9)
    a_scales = torch.rand(n) * 0.05 + 0.01
    a_zps = torch.randint(-3, 4, (n,)).float() if asym else None
    w_scales = torch.rand(n, 8) * 0.01 + 0.002 if per_channel else torch.rand(n) * 0.01 + 0.002
    a_form = QuantForm(4, "per_tensor", not asym)
    w_form = QuantForm(3, "per_channel" if per_channel else "per_tensor", True)
    a_range, w_range = grid_for(a_form, False), grid_for(w_form, False)
    alpha = torch.randn(n, requires_grad=True)
    beta = torch.randn(n, requires_grad=True)
    a_scales.requires_grad_(True)  # QAT learns the candidate scales too (LSQ gradient per branch)
    w_scales.requires_grad_(True)
    grads = []
    outs = []
    for efficient in (True, False):
        conv.zero_grad()
        alpha.grad = beta.grad = a_scales.grad = w_scales.grad = None
        x = x0.clone().requires_grad_(True)
        p, q = torch.softmax(alpha, 0), torch.softmax(beta, 0)
        if efficient:
            xm = mix_quant(x, p, a_scales, a_zps, *a_range, per_channel=False)
            wm = mix_quant(conv.weight, q, w_scales, None, *w_range, per_channel=per_channel)
            y = conv._conv_forward(xm, wm, conv.bias)
        else:
            y = naive_mixed_forward(conv, x, p, q, a_scales, a_zps, a_range, w_scales, None, w_range, per_channel)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        y.backward(g)
        outs.append(y.detach())
        grads.append((x.grad.clone(), alpha.grad.clone(), beta.grad.clone(), conv.weight.grad.clone(),
                      a_scales.grad.clone(), w_scales.grad.clone()))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    for a, b in zip(grads[0], grads[1], strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_mixture_keeps_no_copies_of_branches():
    # saved for backward: x, p, scales, zps only -- not the N quantized copies of x
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    p = torch.softmax(torch.zeros(4, requires_grad=True), 0)
    y = mix_quant(x, p, torch.full((4,), 0.1), None, -8, 7, per_channel=False)
    saved = [t for t in y.grad_fn.saved_tensors if t.numel() == x.numel()]
    assert len(saved) == 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, synthetic):
    out = tmp_path_factory.mktemp("dqss")
    spec = JobSpec.model_validate({"data": {"name": "synthetic"}, "training": {"epochs": 2, "batch_size": 64}})
    tr, va = split_train_val(synthetic.train, 128, 0)
    data = PreparedData(synthetic, tr, va, synthetic.test)
    train_fp32(spec, data, out / "fp32", progress=False)
    return out, data


def _ptq(config="uniform:W4A4", **kw):
    return DQSSSpec(mode="ptq", target=QuantTarget(config=config, calib_images=128), **kw)


def test_dqss_ptq_writes_strategy_and_rebuilds(tiny):
    out, data = tiny
    spec = _ptq("uniform:W3A3", iters=20, lr=0.1, batch_size=64, easyquant_steps=10)
    res = run_dqss(spec, out / "fp32" / "model.pt", data, out / "dqss")
    st = Strategy.load(res.strategy_path)
    assert st == res.strategy
    assert st.choices() == res.choices
    raw = json.loads(res.strategy_path.read_text())  # the file layout strategy.json has always had
    assert list(raw) == ["format", "mode", "config", "candidates", "weights", "input_shape", "search", "layers"]
    assert st.mode == "ptq"
    assert set(st.candidates) == {"maxabs", "kl", "easyquant", "admm"}
    layer = next(iter(st.values()))
    assert layer.activation in st.candidates
    assert abs(sum(layer.p) - 1) < 1e-5
    # the search moved away from uniform p somewhere
    assert any(max(v.p) > 0.26 or max(v.q) > 0.26 for v in st.values())
    model = load_model(load_checkpoint(out / "dqss" / "model.pt"))
    assert evaluate(model, data.test, data.mean, data.std).top1 == pytest.approx(res.test_acc)
    assert json.loads((out / "dqss" / "metrics.json").read_text())["test_acc"] == res.test_acc
    # the strategy file + the FP32 checkpoint alone rebuild the same model (what export uses)
    rebuilt = build_from_strategy(res.strategy_path)
    assert evaluate(rebuilt, data.test, data.mean, data.std).top1 == pytest.approx(res.test_acc)
    # tied layers (same input tensor) chose the same activation algorithm and scale
    groups = {}
    for v in st.values():
        groups.setdefault(v.activation_group, []).append(v)
    shared = [g for g in groups.values() if len(g) > 1]
    assert shared, "resnet8's downsample conv shares its block's input"
    for g in shared:
        assert len({(v.activation, v.activation_scale, v.p) for v in g}) == 1


def test_shared_input_groups_tie_residual_branches():
    model = convert(create("resnet8", 10, 1), QuantPolicy(), torch.zeros(2, 1, 28, 28))
    groups = shared_input_groups(model, torch.randn(2, 1, 28, 28))
    tied = {n: lead for n, lead in groups.items() if n != lead}
    # every downsample 1x1 conv reads the same tensor as its block's first 3x3 conv
    assert tied
    assert all("downsample" in n or "shortcut" in n for n in tied), tied
    assert all(groups[lead] == lead for lead in tied.values())


def test_dqss_qat_searches_finetunes_and_rebuilds(tiny):
    out, data = tiny
    spec = DQSSSpec(mode="qat", target=QuantTarget(config="uniform:W4A4", calib_images=128), search_epochs=1.0,
                    finetune_epochs=1.0, batch_size=64, easyquant_steps=10)
    res = run_dqss(spec, out / "fp32" / "model.pt", data, out / "dqss-qat")
    st = Strategy.load(res.strategy_path)
    assert st.mode == "qat"
    assert st.weights == "model.pt"
    assert st.search["search_steps"] == st.search["finetune_steps"] == len(data.train) // 64
    # alpha/beta moved during the joint pass
    assert any(max(v.p) > 0.26 or max(v.q) > 0.26 for v in st.values())
    fp32_acc = evaluate(load_model(load_checkpoint(out / "fp32" / "model.pt")), data.test, data.mean,
                        data.std).top1
    assert res.test_acc > fp32_acc - 0.1
    rebuilt = build_from_strategy(res.strategy_path)
    assert evaluate(rebuilt, data.test, data.mean, data.std).top1 == pytest.approx(res.test_acc)
    # fine-tuning kept each shared input quantized once: tied layers end with the same input scale
    groups = {}
    for v in st.values():
        groups.setdefault(v.activation_group, set()).add(v.activation_scale)
    assert any(len(g) == 1 for g in groups.values())
    assert all(len(g) == 1 for g in groups.values())
    # the same seed gives the same strategy and accuracy
    res2 = run_dqss(spec, out / "fp32" / "model.pt", data, out / "dqss-qat2")
    assert res2.test_acc == res.test_acc
    assert res2.choices == res.choices


def test_strategy_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "s.json"
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(ConfigError, match="not a DQSS strategy file"):
        Strategy.load(bad)


def test_dqss_ptq_options_learn_scales_and_untie(tiny):
    out, data = tiny
    kw = {"iters": 10, "lr": 0.1, "batch_size": 64, "easyquant_steps": 10}
    base = run_dqss(_ptq(**kw), out / "fp32" / "model.pt", data, out / "p0").strategy
    learned = run_dqss(_ptq(scale_lr=1e-3, tie=False, **kw), out / "fp32" / "model.pt", data, out / "p1").strategy
    assert learned.search["scale_lr"] == 1e-3
    assert learned.search["tied_inputs"] is False
    # every layer is its own activation group without tying, and the chosen scales moved with scale_lr > 0
    assert all(v.activation_group == n for n, v in learned.items())
    assert any(v.activation_group != n for n, v in base.items())
    assert any(learned[n].weight_scale != base[n].weight_scale for n in base)


def test_anneal_schedule_runs_geometric_then_holds():
    a = Anneal(1.0, 0.01, steps=100)  # hot for 50 steps, geometric down by step 90
    assert a.at(0) == pytest.approx(1.0)
    assert a.at(50) == pytest.approx(1.0)
    assert a.at(70) == pytest.approx(0.1)  # half-way through the annealing steps: sqrt(1 * 0.01)
    assert a.at(90) == pytest.approx(0.01)
    assert a.at(99) == pytest.approx(0.01)
    assert all(a.at(k + 1) <= a.at(k) for k in range(99))


def _mixture_vs_argmax_gap(tiny, final_temperature):
    """Largest |logit| change between the trained mixture (last search step) and the argmax strategy it picks."""
    out, data = tiny
    fp32 = load_model(load_checkpoint(out / "fp32" / "model.pt"))
    x = next(iter(ArrayBatches(data.train, 64, data.mean, data.std)))[0]
    model = quantize(fp32, "W3A3", x[:8])
    batches = [x[:32], x[32:]]
    seen = {}
    settings = _ptq("uniform:W3A3", iters=40, lr=0.2, easyquant_steps=10, final_temperature=final_temperature)

    def last(step, _loss):
        if step == settings.iters - 1:
            with torch.no_grad():
                seen["mix"] = model(x)

    dqss_search(model, batches, settings, on_step=last)
    with torch.no_grad():
        return (model(x) - seen["mix"]).abs().max().item()


def test_annealed_search_ends_at_the_strategy_it_deploys(tiny):
    # a constant T=1 trains a soft mixture that no single calibrator equals (measured on resnet8 W3A3: mixture
    # 91.8 % val, its argmax 85.3 %); annealing to T=0.01 trains what deploys
    hot = _mixture_vs_argmax_gap(tiny, 1.0)
    cold = _mixture_vs_argmax_gap(tiny, 0.01)
    assert cold < 1e-3 < hot


def test_guard_deploys_whichever_of_search_and_single_candidates_fits_the_teacher_best(tiny):
    out, data = tiny
    res = run_dqss(_ptq("uniform:W3A3", iters=20, lr=0.1, batch_size=64, easyquant_steps=10), out / "fp32" / "model.pt",
                   data, out / "dqss-guard")
    guard = res.strategy.search["guard"]
    kl = guard["calib_kl"]
    assert set(kl) == {"search", "maxabs", "kl", "easyquant", "admm"}
    assert kl[guard["deployed"]] == min(kl.values())
    if guard["deployed"] != "search":  # a single candidate won: every layer deploys it
        assert set(res.choices.values()) == {(guard["deployed"], guard["deployed"])}
    off = run_dqss(_ptq("uniform:W3A3", iters=20, lr=0.1, batch_size=64, easyquant_steps=10, guard=False),
                   out / "fp32" / "model.pt", data, out / "dqss-noguard")
    assert "guard" not in off.strategy.search
