"""Calibrate a converted model's ACTIVE forms with named methods (maxabs, mse, kl, admm, easyquant), per
layer and separately for activations and weights: the uniform PTQ baselines and what DQSS chooses among."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from quantsearch.errors import ConfigError
from quantsearch.quant.calibrators import CALIBRATORS, get_calibrator
from quantsearch.quant.convert import collect_inputs, quant_layers
from quantsearch.quant.easyquant import easyquant_layer

METHODS = ("maxabs", "mse", "kl", "admm", "easyquant", "torchao-minmax", "torchao-histogram")
# EasyQuant starts from KL (activations) and per-channel MaxAbs (weights), as the paper does
_EASYQUANT_INIT = {"activation": "kl", "weight": "maxabs"}


def _check(method: str) -> None:
    if method not in METHODS:
        from quantsearch._util import suggest

        raise ConfigError(f"unknown calibration method '{method}'{suggest(method, METHODS)}; choose from {METHODS}")


@torch.no_grad()
def calibrate_active(model: nn.Module, inputs: Iterable[torch.Tensor],
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
        _check(pair[0])
        _check(pair[1])
    for name, layer in layers.items():
        if layer.layer_config() is None:
            raise ConfigError(f"layer {name} has no active config; set one before calibrating")
    needs_eq = any("easyquant" in pair for pair in per_layer.values())
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
        a_cal = get_calibrator(_EASYQUANT_INIT["activation"] if a_method == "easyquant" else a_method)
        w_cal = get_calibrator(_EASYQUANT_INIT["weight"] if w_method == "easyquant" else w_method)
        ws, wz = w_cal.scale_offset(layer.weight, cfg.weight, False, kind="weight")  # type: ignore[attr-defined]
        layer.wq.set_qparams(cfg.weight, ws, wz)
        if name in samples:
            as_, az = a_cal.scale_offset(samples[name], cfg.activation, nonneg, kind="activation")
            layer.aq.set_qparams(cfg.activation, as_, az)
        lead = lead_of.get(name, name)
        shared = (lead != name and lead in layers and layers[lead].layer_config() is not None
                  and layers[lead].layer_config().activation == cfg.activation and per_layer[lead][0] == a_method)
        if shared:  # the leader came first (execution order): its input scale, already final, is this tensor's
            layer.aq.nonneg = layers[lead].aq.nonneg
            s_lead, z_lead = layers[lead].aq.qparams(cfg.activation)
            layer.aq.set_qparams(cfg.activation, s_lead, z_lead)
        if "easyquant" in (a_method, w_method) and name in whole:
            w0, wz0 = layer.wq.qparams(cfg.weight)
            a0, az0 = layer.aq.qparams(cfg.activation)
            res = easyquant_layer(layer, whole[name], cfg.weight, cfg.activation, w0.abs().clone(), a0.abs().clone(),
                                  nonneg, None if wz0 is None else wz0.clone(), None if az0 is None else az0.clone(),
                                  steps=easyquant_steps, rounds=easyquant_rounds)
            if w_method == "easyquant":
                layer.wq.set_qparams(cfg.weight, res.w_scale, wz0)
            if a_method == "easyquant" and not shared:
                layer.aq.set_qparams(cfg.activation, res.a_scale, az0)
            report[name] = {"cos_before": res.cos_before, "cos_after": res.cos_after}
        layer.wq.calibrated.fill_(True)
        layer.aq.calibrated.fill_(True)
    return report


__all__ = ["CALIBRATORS", "METHODS", "calibrate_active"]
