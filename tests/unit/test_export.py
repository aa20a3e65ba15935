"""ONNX QDQ export: the graph onnx.checker accepts, onnxruntime's logits against the PyTorch fake-quant model,
4-bit types for 2..4 bits, profile refusals, nothing under the final name when the check fails, the model card,
and which W8A8 Conv/Gemm onnxruntime runs as integer kernels."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import onnx
import pytest
import quantsearch as qs
import torch
from onnx import TensorProto, numpy_helper
from quantsearch.config import QuantTarget
from quantsearch.errors import ConfigError
from quantsearch.export import ExportCheckError, ExportResult, export_onnx, read_card
from quantsearch.export import exporter as exporter_module
from quantsearch.models import create
from quantsearch.quant.convert import convert, quant_layers
from quantsearch.quant.forms import LayerConfig, QuantForm, grid_for
from quantsearch.space.cost import layer_costs, subnet_cost
from quantsearch.space.subnet import SubnetConfig, get_config, set_config

FOUR_BIT = {TensorProto.INT4, TensorProto.UINT4}
EIGHT_BIT = {TensorProto.INT8, TensorProto.UINT8}


def _data(seed: int = 0, n: int = 24, signed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g) - (0.3 if signed else 0.0)
    return x, torch.randint(0, 10, (n,), generator=g)


def _float_model(name: str, seed: int = 0, negative_gamma: bool = False) -> torch.nn.Module:
    """A reference model with non-trivial BN statistics (some negative gains when asked) and logits of order 1."""
    torch.manual_seed(seed)
    model = create(name, 10, 1).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.1, 0.1)
                m.weight.uniform_(-1.0 if negative_gamma else 0.5, 1.5)
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(30.0)
    return model


def _quantized(name: str, config: str | QuantTarget, *, negative_gamma: bool = False, signed: bool = False
               ) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    x, y = _data(signed=signed)
    q = qs.quantize(_float_model(name, negative_gamma=negative_gamma), config, x[:8])
    qs.calibrate(q, [x[:12]], method="maxabs")
    return q, x, y


def _inits(path) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in onnx.load(str(path)).graph.initializer}


def _close(res: ExportResult, rel: float) -> None:
    card = read_card(res.card_json)
    assert res.ort_top1 == res.torch_top1
    assert res.max_abs_logit_diff <= rel * max(1.0, card["accuracy"]["max_abs_logit"]), res


@pytest.fixture(scope="module")
def w4a4(tmp_path_factory):
    q, x, y = _quantized("resnet8", "W4A4", negative_gamma=True)
    path = tmp_path_factory.mktemp("w4a4") / "resnet8-w4a4.onnx"
    res = export_onnx(q, x[:2], path, check_batches=[(x[:12], y[:12]), (x[12:], y[12:])], calibration="maxabs")
    return q, x, res


def test_w4a4_is_int4_qdq_and_matches_pytorch(w4a4):
    q, _, res = w4a4
    assert res.path.exists()
    assert (res.samples, res.opset) == (24, 21)
    model = onnx.load(str(res.path))
    onnx.checker.check_model(model, full_check=True)
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    for name, layer in quant_layers(q).items():
        bits = layer.layer_config().weight.bits
        w = inits[f"{name}.weight_quantized"]
        assert w.data_type in (FOUR_BIT if bits == 4 else EIGHT_BIT)
        assert inits[f"{name}.input_zero_point"].data_type in (FOUR_BIT if bits == 4 else EIGHT_BIT)
        axis = [a.i for a in nodes[f"{name}.weight/DequantizeLinear"].attribute if a.name == "axis"]
        assert axis == [0]  # per-channel weights (and BN folded into them)
    assert not [n for n in model.graph.node if n.op_type == "BatchNormalization"]  # every BN folded
    qdq = Counter(n.op_type for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    # per layer: the input's Q and DQ and the weight's DQ; the 8-bit head's bias is int32 (a DQ) so it fuses
    assert qdq["QuantizeLinear"] == 10
    assert res.n_qdq == qdq["QuantizeLinear"] + qdq["DequantizeLinear"] == 3 * 10 + 1
    # below 8 bits a folded BN's bias is added after the conv, where onnxruntime cannot re-round it
    assert Counter(n.op_type for n in model.graph.node)["Add"] == 3 + 8
    _close(res, 1e-4)  # 2..4-bit layers run the same integer grid as PyTorch: equal up to float summation order


@pytest.mark.parametrize("config", ["W3A3", "W2A2"])
def test_narrow_grids_live_in_int4_and_match_pytorch(tmp_path, config):
    bits = int(config[1])
    q, x, y = _quantized("resnet8", config, negative_gamma=True)
    res = export_onnx(q, x[:2], tmp_path / "m.onnx", check_batches=[(x, y)])
    model = onnx.load(str(res.path))
    onnx.checker.check_model(model, full_check=True)
    inits = {t.name: t for t in model.graph.initializer}
    made = {o: n for n in model.graph.node for o in n.output}
    lo, hi = grid_for(QuantForm(bits), False)
    for name, layer in quant_layers(q).items():
        if layer.pinned:
            continue
        w = inits[f"{name}.weight_quantized"]
        values = numpy_helper.to_array(w).astype(int)
        assert w.data_type == TensorProto.INT4
        assert lo <= values.min()
        assert values.max() <= hi
        q_node = next(n for n in model.graph.node if n.output == [f"{name}.input_quantized"])
        # a narrower grid than the type: the float input is clipped to the grid's range first
        assert made[q_node.input[0]].op_type in ("Clip", "Max")
    _close(res, 1e-3)


def test_w8a8_integer_kernels_in_onnxruntimes_optimized_graph(tmp_path):
    import onnxruntime as ort

    found = {}
    for name in ("resnet8", "mobilenetv2-tiny"):
        q, x, y = _quantized(name, "W8A8", negative_gamma=True)
        res = export_onnx(q, x[:2], tmp_path / f"{name}.onnx", check_batches=[(x, y)])
        onnx.checker.check_model(onnx.load(str(res.path)), full_check=True)
        _close(res, 0.05)  # integer kernels round bias and requantize their own way: close, not bit-equal
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(tmp_path / f"{name}.optimized.onnx")
        ort.InferenceSession(str(res.path), opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(opts.optimized_model_filepath).graph.node
        ops = Counter(n.op_type for n in optimized)
        assert ops["QLinearConv"] + ops["QGemm"] == res.integer_kernels
        fused = {layer for layer in quant_layers(q) for n in optimized
                 if n.op_type in ("QLinearConv", "QGemm") and f"{layer}.weight_quantized" in n.input}
        found[name] = (fused, len(quant_layers(q)), ops)
    fused, total, ops = found["resnet8"]
    # a conv fuses when its output (through ReLU) feeds only the next layer's Q; the float residual adds keep the
    # stem (its ReLU also feeds an add), every conv2 and every shortcut conv in float; the head's Gemm is a QGemm
    assert fused == {"stages.0.conv1", "stages.1.conv1", "stages.2.conv1", "fc"}
    assert (ops["QLinearConv"], ops["QGemm"], total) == (3, 1, 10)
    fused, total, ops = found["mobilenetv2-tiny"]
    assert (ops["QLinearConv"], ops["QGemm"], total) == (13, 1, 23)


def _output_nodes(path) -> list[str]:
    """The output quantization points (`requant`) in an exported graph."""
    return [n.name for n in onnx.load(str(path)).graph.node if ".output/" in n.name]


def test_w8a8_output_requantization_makes_every_conv_an_integer_kernel(tmp_path):
    q, x, y = _quantized("resnet8", "W8A8", negative_gamma=True)
    calib = [_data(seed=1, n=32)[0]]  # not the check batches: the scales must come from these
    res = export_onnx(q, x[:2], tmp_path / "m.onnx", check_batches=[(x, y)], calib_batches=calib)
    onnx.checker.check_model(onnx.load(str(res.path)), full_check=True)
    assert (res.integer_kernels, res.float_kernels) == (10, 0)  # 9 QLinearConv + the head's QGemm
    _close(res, 0.05)
    card = read_card(res.card_json)
    assert card["onnxruntime"]["float_kernels"] == 0
    points = {r["name"]: r["output"] for r in card["layers"] if r["output"] is not None}
    # the stem's ReLU feeds stages.0.conv1 and the identity branch; every conv2 and shortcut conv feeds an Add
    assert set(points) == {"stem.0", "stages.0.conv2", "stages.1.conv2", "stages.1.shortcut.0", "stages.2.conv2",
                           "stages.2.shortcut.0"}
    stem = points["stem.0"]  # shares the next layer's input quantizer: one grid per tensor
    assert (stem["after"], stem["shared_with"], stem["onnx_type"]) == ("Relu", "stages.0.conv1.input/QuantizeLinear",
                                                                       "UINT8")
    inits = _inits(res.path)
    assert stem["scale"] == pytest.approx(float(numpy_helper.to_array(inits["stages.0.conv1.input_scale"])))
    for name in set(points) - {"stem.0"}:
        p = points[name]
        assert (p["after"], p["shared_with"]) == ("Conv", None)
        lo, hi = p["calibrated_min"], p["calibrated_max"]
        assert lo < 0 < hi
        assert p["scale"] == pytest.approx((hi - lo) / 255, rel=1e-6)
        assert 0 < p["zero_point"] < 255
        assert float(numpy_helper.to_array(inits[f"{name}.output_scale"])) == pytest.approx(p["scale"])
    assert len(_output_nodes(res.path)) == 2 * 6
    assert res.n_qdq == 31 + 2 * 6
    assert any(n.startswith("Output requantization: 6 W8A8 layers") and "32 calibration images" in n
               for n in card["notes"])
    # other check batches, the same calibration: the same points
    x2, y2 = _data(seed=2)
    again = export_onnx(q, x[:2], tmp_path / "m2.onnx", check_batches=[(x2, y2)], calib_batches=calib)
    assert [r["output"] for r in read_card(again.card_json)["layers"]] == [r["output"] for r in card["layers"]]


def test_w8a8_without_calibration_keeps_the_residual_convs_float_and_says_why(tmp_path):
    q, x, y = _quantized("resnet8", "W8A8", negative_gamma=True)
    res = export_onnx(q, x[:2], tmp_path / "m.onnx", check_batches=[(x, y)])
    assert (res.integer_kernels, res.float_kernels, res.n_qdq) == (4, 6, 31)
    assert _output_nodes(res.path) == []
    card = read_card(res.card_json)
    assert all(r["output"] is None for r in card["layers"])
    note = next(n for n in card["notes"] if "stay float" in n)
    assert note.startswith("6 W8A8 layers stay float Conv/Gemm in onnxruntime (stem.0, stages.0.conv2,")
    assert "pass calib_batches" in note


def test_below_w8a8_calibration_adds_no_points(tmp_path, w4a4):
    q, x, res = w4a4
    # the stem is pinned at W8A8, but its ReLU feeds 4-bit inputs: no extra rounding in front of them
    again = export_onnx(q, x[:2], tmp_path / "m.onnx", check_batches=[x], calib_batches=[_data(seed=1)[0]])
    assert _output_nodes(again.path) == []
    assert (again.n_qdq, again.integer_kernels, again.float_kernels) == (res.n_qdq, res.integer_kernels,
                                                                         res.float_kernels)
    card = read_card(again.card_json)
    assert all(r["output"] is None for r in card["layers"])
    assert not [n for n in card["notes"] if "requantization" in n or "stay float" in n]
    assert [n.op_type for n in onnx.load(str(again.path)).graph.node] == \
        [n.op_type for n in onnx.load(str(res.path)).graph.node]


def test_output_point_grids():
    from quantsearch.export.requant import quant_params

    assert quant_params(0.0, 2.55, "UINT8", False) == (pytest.approx(0.01), 0)  # non-negative: zero point at 0
    assert quant_params(0.0, 2.55, "INT8", False) == (pytest.approx(0.01), -128)  # ... or at INT8's lowest value
    assert quant_params(-1.0, 1.55, "UINT8", False) == (pytest.approx(0.01), 100)
    assert quant_params(0.5, 2.55, "UINT8", False) == (pytest.approx(0.01), 0)  # 0 stays on the grid
    assert quant_params(-1.0, 2.54, "INT8", True) == (pytest.approx(0.02), 0)  # zero-point-free targets
    assert quant_params(0.0, 0.0, "UINT8", False) == (1.0, 0)


def test_export_job_calibrates_output_points_on_training_images(tmp_path):
    from quantsearch.config import DataSpec
    from quantsearch.data import ArrayBatches, prepare_data, take
    from quantsearch.export.job import ExportSource, export_model, result_path

    data = prepare_data(DataSpec(name="synthetic"))
    x = next(iter(ArrayBatches(take(data.train, 64, 1), 64, data.mean, data.std)))[0]
    q = qs.quantize(_float_model_for(data), "W8A8", x[:8])
    qs.calibrate(q, [x], method="maxabs")
    res = export_model(ExportSource(q.eval(), "maxabs", "test", data.bundle.name), data, tmp_path / "m.onnx",
                       check_images=64, calib_images=100)
    assert (res.integer_kernels, res.float_kernels) == (10, 0)
    assert any("min/max over 100 calibration images" in n for n in read_card(res.card_json)["notes"])
    assert json.loads(result_path(res.path).read_text())["float_kernels"] == 0
    with pytest.raises(ConfigError, match="calib_images"):
        export_model(ExportSource(q, "maxabs", "test", data.bundle.name), data, tmp_path / "n.onnx", calib_images=-1)


def _float_model_for(data) -> torch.nn.Module:
    torch.manual_seed(0)
    return create("resnet8", data.bundle.num_classes, 1).eval()


def test_mixed_config_with_every_bit_width_and_form(tmp_path):
    x, y = _data(signed=True)
    q = convert(_float_model("mobilenetv2-tiny", negative_gamma=True), example=x[:2])
    names = list(quant_layers(q))
    layers = []
    for i, name in enumerate(names):
        pin = q.get_submodule(name).pinned
        wb, ab = (8, 8) if pin else (2 + i % 7, 2 + (3 * i) % 7)
        layers.append((name, LayerConfig(QuantForm(wb, "per_channel" if i % 2 else "per_tensor", i % 3 != 0),
                                         QuantForm(ab, "per_tensor", i % 4 == 0))))
    cfg = SubnetConfig(tuple(layers))
    set_config(q, cfg)
    qs.calibrate(q, [x[:12]], method="maxabs")
    # a learned, real-valued offset: exported rounded, and compared against the rounded PyTorch model
    victim = next(n for n, c in cfg.layers if not c.activation.symmetric and not q.get_submodule(n).pinned)
    aq, form = q.get_submodule(victim).aq, cfg[victim].activation
    s, z = aq.qparams(form)
    aq.set_qparams(form, s, z.round() + 0.4)
    res = export_onnx(q, x[:2], tmp_path / "mixed.onnx", check_batches=[(x, y)])
    assert res.offsets_rounded >= 1
    assert float(aq.qparams(form)[1].detach()) % 1 == pytest.approx(0.4, abs=1e-4)  # the caller's model is untouched
    model = onnx.load(str(res.path))
    onnx.checker.check_model(model, full_check=True)
    inits = {t.name: t for t in model.graph.initializer}
    for name, c in cfg.layers:
        w = inits[f"{name}.weight_quantized"]
        assert w.data_type in (FOUR_BIT if c.weight.bits <= 4 else EIGHT_BIT), name
        zp = inits[f"{name}.input_zero_point"]
        assert zp.data_type in (FOUR_BIT if c.activation.bits <= 4 else EIGHT_BIT), name
    assert get_config(q) == cfg
    _close(res, 0.01)  # only the pinned W8A8 first and last layers may run as integer kernels


def test_profiles_refuse_what_their_target_cannot_run(tmp_path, w4a4):
    q, x, _ = w4a4
    refusal = r"'tensorrt-int8' cannot run layer stem\.0 at W8\(pc/sym\) A8\(asym\)"  # affine inputs: symmetric only
    with pytest.raises(ConfigError, match=refusal) as err:
        export_onnx(q, x[:2], tmp_path / "m.onnx", profile="tensorrt-int8")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="unknown backend profile"):
        export_onnx(q, x[:2], tmp_path / "m.onnx", profile="tensorrt")
    q8, x8, _ = _quantized("resnet8", QuantTarget(config="W8A8", act_symmetric=True))
    with pytest.raises(ConfigError, match="unsigned grid"):  # post-ReLU inputs calibrate to [0, 255]
        export_onnx(q8, x8[:2], tmp_path / "m.onnx", profile="tensorrt-int8")
    assert list(tmp_path.iterdir()) == []
    # TFLite's int8 activations: the affine [0, 255] grid lands in INT8 with its zero point shifted by -128
    q8, x8, y8 = _quantized("resnet8", "W8A8")
    res = export_onnx(q8, x8[:2], tmp_path / "tflite.onnx", profile="tflite-int8", check_batches=[(x8, y8)])
    inits = _inits(res.path)
    assert all(inits[f"{n}.input_zero_point"].data_type == TensorProto.INT8 for n in quant_layers(q8))
    assert res.integer_kernels == 4


def test_a_failed_check_leaves_nothing_under_the_final_name(tmp_path, monkeypatch, w4a4):
    q, x, _ = w4a4
    real = exporter_module.layer_exports

    def wrong_scale(model):
        specs = real(model)
        bad = specs[3]
        specs[3] = dataclasses.replace(bad, weight=dataclasses.replace(bad.weight, scale=bad.weight.scale * 3.0))
        return specs

    monkeypatch.setattr(exporter_module, "layer_exports", wrong_scale)
    out = tmp_path / "out"
    with pytest.raises(ExportCheckError, match=r"disagrees with the PyTorch fake-quant model.*nothing written"):
        export_onnx(q, x[:2], out / "m.onnx", check_batches=[x])
    assert list(out.iterdir()) == []  # no model, no temp file, no card


def test_model_card_lists_layers_costs_and_accuracies(w4a4):
    q, x, res = w4a4
    card = json.loads(res.card_json.read_text())
    assert res.card_md.name == "resnet8-w4a4.card.md"
    assert res.card_json.parent == res.path.parent
    config = get_config(q)
    cost = subnet_cost(layer_costs(q, tuple(x.shape[1:])), config)
    assert (card["totals"]["bitops"], card["totals"]["weight_bytes"]) == (cost.bitops, cost.weight_bytes)
    assert [r["name"] for r in card["layers"]] == list(quant_layers(q))
    for row in card["layers"]:
        want = config[row["name"]]
        assert (row["weight"]["bits"], row["activation"]["bits"]) == (want.weight.bits, want.activation.bits)
        assert row["weight"]["granularity"] == "per_channel"
        assert row["bn_folded"] == (row["op"] == "Conv")
        assert row["calibration"] == {"activation": "maxabs", "weight": "maxabs"}
        assert row["bitops"] == row["macs"] * want.weight.bits * want.activation.bits
    assert (card["accuracy"]["torch_top1"], card["accuracy"]["ort_top1"]) == (res.torch_top1, res.ort_top1)
    assert card["onnxruntime"]["integer_kernels"] == res.integer_kernels == 1  # the 8-bit head's QGemm
    md = res.card_md.read_text()
    assert "| stages.0.conv1 | Conv | 4 | pc/sym | INT4 | 4 |" in md
    assert "onnxruntime (CPU)" in md
    assert ExportResult.from_json(res.to_json()) == res


def test_bad_requests_are_one_line(tmp_path, w4a4):
    q, x, _ = w4a4
    with pytest.raises(ConfigError, match="opset 12"):
        export_onnx(q, x[:2], tmp_path / "m.onnx", opset=12)
    float_only = convert(_float_model("resnet8"), example=x[:2])
    with pytest.raises(ConfigError, match="activate a config"):
        export_onnx(float_only, x[:2], tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="no quantized layers"):
        export_onnx(_float_model("resnet8"), x[:2], tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_export_plan_follows_the_spec_and_names_what_is_missing(tmp_path):
    from quantsearch.config import JobSpec
    from quantsearch.pipeline import configured_stages, export_plan

    base = {"output_dir": str(tmp_path), "data": {"name": "synthetic"}}
    spec = JobSpec.model_validate({**base, "qat": {}, "dqss": {}, "search": {"budget": {"bitops": "W4A4"},
                                                                         "dqss": True, "profile": "tflite-int8"},
                                   "export": {}})
    assert configured_stages(spec)[-1] == "export"
    plan = export_plan(spec)  # auto: the last quantized result the job makes
    assert (plan.source, plan.strategy, plan.profile) == ("search-dqss", tmp_path / "dqss-best" / "strategy.json",
                                                          "tflite-int8")
    plan = export_plan(spec.model_copy(update={"export": spec.export.model_copy(update={"source": "search"})}))
    assert (plan.subnet, plan.checkpoint) == (tmp_path / "search" / "best.json", tmp_path / "supernet" / "supernet.pt")
    only_qat = JobSpec.model_validate({**base, "qat": {}, "export": {}})
    assert export_plan(only_qat).checkpoint == tmp_path / "qat" / "model.pt"
    with pytest.raises(ConfigError, match="needs a dqss section"):
        export_plan(JobSpec.model_validate({**base, "qat": {}, "export": {"source": "dqss"}}))
    with pytest.raises(ConfigError, match="add a qat, dqss or search section"):
        export_plan(JobSpec.model_validate({**base, "export": {}}))
    with pytest.raises(ConfigError, match="subsets"):
        export_plan(JobSpec.model_validate({**base, "dqss": {"subsets": 2}, "export": {}}))


def test_export_auto_after_search_with_dqss_takes_the_better_on_val(tmp_path):
    from quantsearch.config import JobSpec
    from quantsearch.pipeline import _better_of_search_and_dqss, export_plan

    spec = JobSpec.model_validate({"output_dir": str(tmp_path), "data": {"name": "synthetic"}, "dqss": {},
                                   "search": {"budget": {"bitops": "W4A4"}, "dqss": True}, "export": {}})
    plan = export_plan(spec)
    assert plan.source == "search-dqss"
    assert _better_of_search_and_dqss(spec, plan, tmp_path) == plan  # nothing measured yet: as planned
    (tmp_path / "dqss-best").mkdir()
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "best.json").write_text(json.dumps({"measured_val_acc": 0.86}))
    (tmp_path / "dqss-best" / "metrics.json").write_text(json.dumps({"val_acc": 0.70}))
    assert _better_of_search_and_dqss(spec, plan, tmp_path).source == "search"
    (tmp_path / "dqss-best" / "metrics.json").write_text(json.dumps({"val_acc": 0.90}))
    assert _better_of_search_and_dqss(spec, plan, tmp_path).source == "search-dqss"
