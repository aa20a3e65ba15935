"""torch.compile of converted models: no graph break at a fixed config, LSQ gradients as in eager, one graph for
every subnet, and the `compile` setting wired into QAT, DQSS QAT and supernet training.

Tests compile with the "aot_eager" backend (dynamo's graphs and AOT autograd, no code generation: fast on CPU);
one slow test uses inductor, the default.
"""

import random

import pytest
import torch
import torch._dynamo
from quantsearch.config import DQSSSpec, JobSpec, QATSpec, SupernetSpec
from quantsearch.quant import (
    ElasticQuantizer,
    QuantForm,
    QuantPolicy,
    calibrate_model,
    convert,
    get_profile,
    quant_layers,
)
from quantsearch.quant.forms import ALL_BITS, LayerConfig
from quantsearch.space import SearchSpace, SubnetConfig, set_config
from quantsearch.supernet import SandwichSampler, build_run, sandwich_step
from quantsearch.train import compiling
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend


def _toy() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 1, 8, 8, generator=g), torch.randint(0, 5, (2,), generator=g)


def _converted() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x, y = _data()
    q = convert(_toy(), QuantPolicy(pin_first_last=False), x)
    calibrate_model(q, [x, torch.randn(2, 1, 8, 8)])
    return q.train(), x, y


def _random_config(model: nn.Module, rng: random.Random) -> SubnetConfig:
    def layer() -> LayerConfig:
        gran = rng.choice(["per_channel", "per_tensor"])
        return LayerConfig(QuantForm(rng.choice(ALL_BITS), gran, rng.random() < .5),
                           QuantForm(rng.choice(ALL_BITS), "per_tensor", rng.random() < .5))

    return SubnetConfig(tuple((n, layer()) for n in quant_layers(model)))


def _step(model: nn.Module, params: nn.Module, x: torch.Tensor, y: torch.Tensor
          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and every parameter's gradient (zeros where none) of one forward/backward."""
    params.zero_grad(set_to_none=True)
    out = model(x)
    nn.functional.cross_entropy(out, y).backward()
    return out.detach(), {k: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                          for k, p in params.named_parameters()}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("kind", ["weight", "activation"])
def test_graph_forward_equals_eager_forward_for_every_form(kind):
    """The tensor-driven path a compiled graph runs, called eagerly: the same values bit for bit, the same
    gradients, for every form, and after nonneg flips."""
    torch.manual_seed(1)
    x = torch.randn(6, 3, 4, 4) + (0.0 if kind == "weight" else 0.3)
    q = ElasticQuantizer(kind, 6 if kind == "weight" else 1)
    q.calibrate(x)
    with torch.no_grad():  # offsets away from 0, so affine forms differ from symmetric ones
        for name, p in q.named_parameters():
            if name.startswith("offset"):
                p.normal_(0, 0.1)
    for nonneg in (False, True):
        q.nonneg = nonneg
        for form in q.all_forms():
            q.set_form(form)
            outs = []
            for fn in (q.forward, q._forward_graph):
                q.zero_grad(set_to_none=True)
                xi = x.clone().requires_grad_(True)
                out = fn(xi)
                (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
                grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in q.parameters()]
                outs.append((out.detach(), xi.grad, grads))
            (oe, xe, ge), (og, xg, gg) = outs
            assert torch.equal(oe, og), form
            torch.testing.assert_close(xg, xe, rtol=0, atol=0)
            for a, b in zip(ge, gg, strict=True):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cfg", [
    (QuantForm(4, "per_channel", True), QuantForm(4, "per_tensor", False)),
    (QuantForm(8, "per_tensor", False), QuantForm(2, "per_tensor", True)),
])
def test_fullgraph_no_graph_break_at_a_fixed_config(cfg):
    q, x, _ = _converted()
    set_config(q, SubnetConfig(tuple((n, LayerConfig(*cfg)) for n in quant_layers(q))))
    explained = torch._dynamo.explain(q)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    torch.compile(q, backend="eager", fullgraph=True)(x)  # fullgraph raises on any break


def test_compiled_backward_keeps_lsq_gradients():
    q, x, y = _converted()
    compiled = torch.compile(q, backend="aot_eager", fullgraph=True)
    rng = random.Random(0)
    for _ in range(3):
        set_config(q, _random_config(q, rng))
        out_e, grads_e = _step(q, q, x, y)
        out_c, grads_c = _step(compiled, q, x, y)
        assert torch.equal(out_e, out_c)  # the graph runs the eager forward's operations
        assert any(v.abs().sum() > 0 for k, v in grads_c.items() if "scale" in k)
        for k in grads_e:
            torch.testing.assert_close(grads_c[k], grads_e[k], rtol=1e-5, atol=1e-5, msg=k)


def test_one_graph_for_20_random_subnets():
    """The sandwich's subnets (max, min, random: bits, granularity, symmetry per layer) after one warm-up step:
    no recompilation."""
    q, x, y = _converted()
    space = SearchSpace.for_model(q, get_profile("generic"))
    sampler = SandwichSampler(space, seed=0)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(q, backend=counter)
    form = sampler.form()
    set_config(q, sampler.max_config(form))
    _step(compiled, q, x, y)
    warm = counter.frame_count
    assert warm == 1
    configs = [sampler.min_config(sampler.form()), *sampler.random_configs(19)]
    assert len(set(configs)) == 20
    for cfg in configs:
        set_config(q, cfg)
        _step(compiled, q, x, y)
    assert counter.frame_count == warm


def test_float_mode_is_its_own_graph_and_back():
    """Turning quantization off (float) is another graph; back on, the first graph serves again."""
    q, x, _ = _converted()
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(q, backend=counter)
    rng = random.Random(1)
    set_config(q, _random_config(q, rng))
    quantized = compiled(x)
    from quantsearch.quant import disable_quant

    disable_quant(q)
    torch.testing.assert_close(compiled(x), q(x))
    set_config(q, _random_config(q, rng))
    compiled(x)
    assert counter.frame_count == 2
    assert not torch.equal(quantized, compiled(x))


def test_compile_setting_parsed_and_resolved():
    for section in (QATSpec, SupernetSpec, DQSSSpec):
        assert section().compile is None
        assert section.model_validate({"compile": True}).compile is True
    spec = JobSpec.model_validate({"supernet": {"compile": False}, "qat": {"compile": True}})
    assert spec.supernet is not None
    assert spec.supernet.compile is False
    cpu = torch.device("cpu")
    assert compiling.compile_enabled(None, cpu) is False
    assert compiling.compile_enabled(True, cpu) is True
    assert compiling.compile_enabled(False, torch.device("cuda")) is False
    net = nn.Linear(2, 2)
    assert compiling.maybe_compile(net, None, cpu) is net
    assert compiling.maybe_compile(net, True, cpu) is not net
    from quantsearch.cli import build_parser

    p = build_parser()
    assert p.parse_args(["qat", "--config", "uniform:W4A4", "--checkpoint", "c", "--out", "o", "--compile"]).compile
    assert p.parse_args(["supernet", "train", "job.yaml", "--no-compile"]).compile is False
    assert p.parse_args(["dqss", "--checkpoint", "c", "--bits", "4", "--out", "o"]).compile is None


def _run(compile_on: bool):
    torch.manual_seed(0)
    x, y = _data(3)
    sn = SupernetSpec(calib_images=2, compile=compile_on, n_random=2)
    return build_run(_toy(), sn, [(x, y)], steps_per_epoch=2, seed=0, example=x), sn, x, y


@pytest.mark.slow
def test_sandwich_step_compiled_matches_eager(monkeypatch):
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    eager, sn, x, y = _run(False)
    comp, _, _, _ = _run(True)
    assert eager.net is eager.model
    assert comp.net is not comp.model
    for _ in range(2):
        le, lc = sandwich_step(eager, x, y, sn), sandwich_step(comp, x, y, sn)
        assert le.keys() == lc.keys()
        for k in le:
            assert lc[k] == pytest.approx(le[k], rel=1e-4, abs=1e-5), k
    se, sc = eager.model.state_dict(), comp.model.state_dict()
    for k in se:
        if torch.is_tensor(se[k]) and se[k].is_floating_point():
            torch.testing.assert_close(sc[k], se[k], rtol=1e-3, atol=1e-4, msg=k)


@pytest.mark.slow
def test_dqss_qat_compiled_runs_and_learns(monkeypatch):
    from quantsearch import dqss_search
    from quantsearch.space import model_uniform

    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    q, x, y = _converted()
    set_config(q, model_uniform(q, QuantForm(4, "per_channel", True), QuantForm(4, "per_tensor", False)))
    losses: list[float] = []
    settings = DQSSSpec.model_validate({"mode": "qat", "compile": True, "search_epochs": 4, "finetune_epochs": 2,
                                        "candidates": ["maxabs", "easyquant"], "easyquant_steps": 4,
                                        "target": {"calib_images": 2}})
    strategy = dqss_search(q, [(x, y)], settings, on_step=lambda _s, loss: losses.append(loss))
    assert len(losses) == 6
    assert all(torch.isfinite(torch.tensor(losses)))
    assert set(strategy) == set(quant_layers(q))


@pytest.mark.slow
def test_inductor_compiled_step_matches_eager_and_switches_without_recompiling():
    """The default backend: generated code, within float tolerance of eager; a new subnet reuses the graph."""
    q, x, y = _converted()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(q, backend=counter, fullgraph=True)
    rng = random.Random(2)
    for _ in range(2):
        set_config(q, _random_config(q, rng))
        out_e, grads_e = _step(q, q, x, y)
        out_c, grads_c = _step(compiled, q, x, y)
        torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-4)
        for k in grads_e:
            torch.testing.assert_close(grads_c[k], grads_e[k], rtol=1e-3, atol=1e-4, msg=k)
    assert counter.frame_count == 1


def test_cpu_graph_keeps_fake_quant_opaque_and_the_op_checks():
    """On CPU a compiled graph calls quantsearch::fake_quant (the eager passes, which inductor's fused kernels did not
    beat) with the bounds as tensors; torch.library.opcheck validates its schema, fake kernel and autograd."""
    from quantsearch.quant.fakequant import _fake_quant_op

    q, x, _ = _converted()
    set_config(q, _random_config(q, random.Random(2)))
    targets = []

    def backend(gm: torch.fx.GraphModule, _inputs: list[torch.Tensor]):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    torch.compile(q, backend=backend, fullgraph=True)(x)
    assert sum("quantsearch.fake_quant" in t for t in targets) == 2 * len(quant_layers(q))
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g).to(
        memory_format=torch.channels_last), torch.randn(4, 1, 5, 5, generator=g), torch.randn(4, 3, 5, 5).half()]
    for x4 in inputs:
        for scale, zq in [(torch.full((4, 1, 1, 1), 0.3, requires_grad=True), None),
                          (torch.full((), 0.2, requires_grad=True), torch.full((), 2.4, requires_grad=True))]:
            if x4.dtype == torch.half:
                scale, zq = scale.detach().half().requires_grad_(), None if zq is None else zq.detach().half()
            torch.library.opcheck(_fake_quant_op, (x4.requires_grad_(True), scale, zq, torch.tensor(0.0),
                                                   torch.tensor(15.0)))


def test_traced_fake_quant_path_matches_eager(monkeypatch):
    """The path CUDA compiles (_FakeQuant traced into the graph, fused by inductor there), exercised on CPU."""
    from quantsearch.quant import fakequant

    monkeypatch.setattr(fakequant, "OPAQUE_DEVICES", frozenset())
    q, x, y = _converted()
    targets = []

    def backend(gm: torch.fx.GraphModule, inputs: list[torch.Tensor]):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        return aot_autograd(fw_compiler=lambda g, _: make_boxed_func(g.forward))(gm, inputs)

    compiled = torch.compile(q, backend=backend, fullgraph=True)
    for cfg in (_random_config(q, random.Random(3)), _random_config(q, random.Random(4))):
        set_config(q, cfg)
        out_e, grads_e = _step(q, q, x, y)
        out_c, grads_c = _step(compiled, q, x, y)
        assert torch.equal(out_e, out_c)
        for k in grads_e:
            torch.testing.assert_close(grads_c[k], grads_e[k], rtol=1e-5, atol=1e-5, msg=k)
    assert targets
    assert not any("quantsearch.fake_quant" in t for t in targets)
