"""Calibration: set a converted model's scales from the float activations of a few batches.

`calibrate` is the public verb: with a config active (after `quantize`) it calibrates the active forms with a
named method per layer, separately for activations and weights (the uniform PTQ baselines, and what DQSS
chooses among); on a model without a config (a supernet) it initialises every form's table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from quantsearch.data.loader import Batch, batch_inputs, split_batch
from quantsearch.device import model_device
from quantsearch.errors import ConfigError, DataError
from quantsearch.quant.calibrators import Calibrator, MSECalibrator
from quantsearch.quant.convert import disable_quant, quant_layers
from quantsearch.quant.easyquant import easyquant_layer
from quantsearch.quant.registry import CALIBRATORS, check_calibrator, get_calibrator, tensor_calibrators


@torch.no_grad()
def collect_inputs(model: nn.Module, inputs: Iterable[Batch], max_samples: int = 1 << 18,
                   per_batch: int = 1 << 16, keep_images: int = 0
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Run the model in float (eval mode) and return, per quantized layer, a bounded random sample of its
    input values (flat; a seeded random subset of at most `per_batch` values per batch) and the first
    `keep_images` inputs whole (for layer-wise searches like EasyQuant).

    The sample ends with the exact min and max over EVERY batch, so range-based methods (MaxAbs, the KL
    histogram's range) see the true running extremes, not the sample's."""
    layers = quant_layers(model)
    saved = {n: layer.layer_config() for n, layer in layers.items()}
    disable_quant(model)
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    whole: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    counts = dict.fromkeys(layers, 0)
    kept = dict.fromkeys(layers, 0)
    extremes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    batch_index = dict.fromkeys(layers, 0)

    def hook(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def fn(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
            x = inp[0].detach()
            lo, hi = x.min().reshape(1), x.max().reshape(1)  # kept on the device: no host sync per batch
            old = extremes.get(name)
            extremes[name] = (lo, hi) if old is None else (torch.minimum(old[0], lo), torch.maximum(old[1], hi))
            if counts[name] < max_samples:
                flat = x.reshape(-1)
                # a seeded random subset: a stride that is a multiple of the feature map's width would sample
                # one image column only (its border: a constant background's responses, spikes that broke KL)
                k = min(per_batch, flat.numel(), max_samples - counts[name])
                # seeded by the batch and the tensor's size: layers that read one tensor get the same sample
                gen = torch.Generator().manual_seed(batch_index[name] * 1_000_003 + flat.numel())
                idx = torch.randperm(flat.numel(), generator=gen)[:k] if k < flat.numel() else None
                samples[name].append(flat.clone() if idx is None else flat[idx.to(flat.device)])
                counts[name] += samples[name][-1].numel()
            batch_index[name] += 1
            if kept[name] < keep_images:
                whole[name].append(x[: keep_images - kept[name]].clone())
                kept[name] += len(whole[name][-1])
        return fn

    handles = [layer.register_forward_pre_hook(hook(n)) for n, layer in layers.items()]
    was = model.training
    model.eval()
    device = model_device(model)
    try:
        for batch in inputs:
            model(split_batch(batch)[0].to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
        for name, cfg in saved.items():
            layers[name].set_layer_config(cfg)
    bad = next((n for n, (lo, hi) in extremes.items() if not bool(torch.isfinite(torch.cat([lo, hi])).all())), None)
    if bad is not None:  # a NaN/inf scale would follow silently; one sync per layer, once, after the batches
        raise DataError(f"the calibration inputs of layer {bad} hold non-finite values (NaN or inf); check the "
                        "images and the model's weights for NaN/inf")
    flat = {n: torch.cat([*v, *extremes[n]]) for n, v in samples.items() if v}
    return flat, {n: torch.cat(v) for n, v in whole.items() if v}


@torch.no_grad()
def calibrate_model(model: nn.Module, inputs: Iterable[Batch], calibrator: Calibrator | None = None,
                    max_samples: int = 1 << 18, per_batch: int = 1 << 16,
                    weight_calibrator: Calibrator | None = None) -> None:
    """Initialise every quantizer's tables for EVERY form (what a supernet needs): weights from themselves (with
    `weight_calibrator`, default the same), inputs from a sample of their float activations."""
    calibrator = calibrator or MSECalibrator()
    samples, _ = collect_inputs(model, inputs, max_samples, per_batch)
    for name, layer in quant_layers(model).items():
        layer.wq.calibrate(layer.weight, weight_calibrator or calibrator)
        if name in samples:
            layer.aq.calibrate(samples[name], calibrator)


@torch.no_grad()
def calibrate_active(model: nn.Module, inputs: Iterable[Batch],
                     methods: Mapping[str, tuple[str, str]] | tuple[str, str], easyquant_images: int = 50,
                     easyquant_rounds: int = 2, easyquant_steps: int = 100,
                     groups: Mapping[str, str] | None = None) -> dict[str, dict[str, float]]:
    """Set each layer's active weight/input scales with (activation method, weight method).

    `methods` is one pair for every layer or a per-layer mapping. Every layer needs an active config.
    `groups` maps a layer to the first layer reading the same input tensor (dqss.shared_input_groups): such a
    layer takes its leader's input scale when both quantize the tensor alike, so one tensor gets one scale.
    Returns per-layer EasyQuant cosines (before/after) where EasyQuant ran.
    """
    layers = quant_layers(model)
    per_layer = {n: methods for n in layers} if isinstance(methods, tuple) else dict(methods)
    for pair in per_layer.values():
        check_calibrator(pair[0])
        check_calibrator(pair[1])
    for name, layer in layers.items():
        if layer.layer_config() is None:
            raise ConfigError(f"layer {name} has no active config; set one before calibrating")
    needs_eq = any(CALIBRATORS[m].layerwise for pair in per_layer.values() for m in pair)
    samples, whole = collect_inputs(model, inputs, keep_images=easyquant_images if needs_eq else 0)
    report: dict[str, dict[str, float]] = {}
    lead_of = dict(groups or {})
    order = [n for n in layers if lead_of.get(n, n) == n] + [n for n in layers if lead_of.get(n, n) != n]
    for name in order:
        layer = layers[name]
        a_method, w_method = per_layer[name]
        cfg = layer.layer_config()
        assert cfg is not None
        if name in samples:
            layer.aq.nonneg = bool(samples[name].min() >= 0)
        nonneg = layer.aq.nonneg
        a_cal = tensor_calibrators(a_method)[0]
        w_cal = tensor_calibrators(w_method)[1]
        ws, wz = w_cal.scale_offset(layer.weight, cfg.weight, False, kind="weight")
        layer.wq.set_qparams(cfg.weight, ws, wz)
        if name in samples:
            as_, az = a_cal.scale_offset(samples[name], cfg.activation, nonneg, kind="activation")
            layer.aq.set_qparams(cfg.activation, as_, az)
        lead = lead_of.get(name, name)
        lead_cfg = layers[lead].layer_config() if lead != name and lead in layers else None
        shared = lead_cfg is not None and lead_cfg.activation == cfg.activation and per_layer[lead][0] == a_method
        if shared:  # the leader came first (execution order): its input scale, already final, is this tensor's
            layer.aq.nonneg = layers[lead].aq.nonneg
            s_lead, z_lead = layers[lead].aq.qparams(cfg.activation)
            layer.aq.set_qparams(cfg.activation, s_lead, z_lead)
        a_layerwise, w_layerwise = CALIBRATORS[a_method].layerwise, CALIBRATORS[w_method].layerwise
        if (a_layerwise or w_layerwise) and name in whole:
            w0, wz0 = layer.wq.qparams(cfg.weight)
            a0, az0 = layer.aq.qparams(cfg.activation)
            res = easyquant_layer(layer, whole[name], cfg.weight, cfg.activation, w0.abs().clone(), a0.abs().clone(),
                                  nonneg, None if wz0 is None else wz0.clone(), None if az0 is None else az0.clone(),
                                  steps=easyquant_steps, rounds=easyquant_rounds)
            if w_layerwise:
                layer.wq.set_qparams(cfg.weight, res.w_scale, wz0)
            if a_layerwise and not shared:
                layer.aq.set_qparams(cfg.activation, res.a_scale, az0)
            report[name] = {"cos_before": res.cos_before, "cos_after": res.cos_after}
        layer.wq.calibrated.fill_(True)
        layer.aq.calibrated.fill_(True)
    return report


def calibrate(model: nn.Module, batches: Iterable[Batch], method: str = "mse", *, weight_method: str | None = None,
              calib_images: int | None = None, groups: Mapping[str, str] | None = None,
              easyquant_steps: int = 100) -> dict[str, dict[str, float]]:
    """Calibrate a converted model on `batches` (x or (x, y); any iterable, e.g. a DataLoader; moved to the
    model's device), in place.

    With a config active (`quantize`), each layer's active input and weight scales are set by `method` (one of
    `quantsearch.quant.CALIBRATORS`: maxabs, mse, kl, admm, easyquant, torchao-minmax, torchao-histogram) and
    `weight_method` (default: the same). Without one (a supernet), every form's table is initialised with the
    per-tensor calibrator `method` (and `weight_method`). `calib_images` caps the images read; `groups` maps a
    layer to the first layer reading the same input tensor, so one tensor gets one scale
    (`quantsearch.dqss.shared_input_groups`). Returns EasyQuant's per-layer cosines before/after, where it ran.
    """
    weight_method = weight_method or method
    layers = quant_layers(model)
    if not layers:
        raise ConfigError("the model has no quantized layers; quantize it first: quantsearch.quantize(model, 'W8A8')")
    inputs: Iterable[Batch] = batches if calib_images is None else batch_inputs(batches, calib_images)
    active = [layer.layer_config() is not None for layer in layers.values()]
    if all(active):
        return calibrate_active(model, inputs, (method, weight_method), easyquant_steps=easyquant_steps,
                                groups=groups)
    if any(active):
        raise ConfigError("some quantized layers have a config and some do not; set one for every layer "
                          "(quantsearch.quantize) or none (a supernet)")
    calibrate_model(model, inputs, get_calibrator(method), weight_calibrator=get_calibrator(weight_method))
    return {}
