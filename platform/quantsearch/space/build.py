"""Building models: from checkpoints, and quantized to a target (`quantize`: convert + set a config).

Everything here works on models and checkpoint payloads in memory; reading and writing files is the job
wrappers' business (train/, dqss/run.py, supernet/job.py).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantsearch.config import QuantTarget, make_section
from quantsearch.data.loader import Batch, split_batch
from quantsearch.errors import ConfigError
from quantsearch.models import create
from quantsearch.quant.convert import QuantPolicy, convert, quant_layers
from quantsearch.quant.profiles import get_profile
from quantsearch.space.space import SearchSpace
from quantsearch.space.subnet import SubnetConfig, parse_uniform, set_config


def resolve_config(target: QuantTarget, model: nn.Module) -> SubnetConfig:
    """The SubnetConfig a target asks for on a converted model, checked against the target's backend profile."""
    profile = get_profile(target.profile)
    space = SearchSpace.for_model(model, profile)
    if Path(target.config).suffix.lower() == ".json":
        cfg = SubnetConfig.load(target.config)
    else:
        wf, af = parse_uniform(target.config, target.weight_granularity, target.weight_symmetric,
                               target.act_symmetric)
        cfg = space.uniform(wf.bits, af.bits, wf.granularity, wf.symmetric, af.symmetric)
    layers = set(quant_layers(model))
    if set(cfg) != layers:
        missing, extra = sorted(layers - set(cfg)), sorted(set(cfg) - layers)
        raise ConfigError(f"config '{target.config}' does not match the model: missing {missing[:3]}, unknown "
                          f"{extra[:3]}; use a subnet file made for this model (its search's best.json)")
    if not space.contains(cfg):
        raise ConfigError(f"config '{target.config}' is not deployable on profile '{profile.name}' for this model; "
                          "pick forms the profile lists (`quantsearch profiles list`)")
    return cfg


def quantize(model: nn.Module, config: str | SubnetConfig | QuantTarget = "W8A8", example: Batch | None = None,
             *, policy: QuantPolicy | None = None) -> nn.Module:
    """A quantized copy of `model` with `config` active (the model itself is left as it is).

    Every Conv2d/Linear (grouped and depthwise included) becomes its fake-quantized twin; the first and last layer
    in execution order stay at 8 bits (`policy`). `config` is 'W4A4' / 'uniform:W4A4' (per-channel symmetric
    weights, affine activations, the generic profile), a QuantTarget (forms and profile of your choice), or a
    SubnetConfig (bits and forms per layer). `example` is one batch (x or (x, y)) the model accepts: it finds the
    execution order; without it the registration order is used. Scales are uncalibrated: `calibrate` next.
    A model that is already quantized is copied and switched to `config`.
    """
    x = None if example is None else split_batch(example)[0]
    qmodel = copy.deepcopy(model) if quant_layers(model) else convert(model, policy or QuantPolicy(), x)
    if isinstance(config, SubnetConfig):
        cfg = config
    else:
        target = config if isinstance(config, QuantTarget) else make_section(QuantTarget, config=config)
        cfg = resolve_config(target, qmodel)
    set_config(qmodel, cfg)
    return qmodel


def build_model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Recreate the FP32 model a checkpoint was trained as and load its weights."""
    model = create(ckpt["model_name"], ckpt["num_classes"], ckpt["in_channels"])
    model.load_state_dict(ckpt["state_dict"])
    return model


def quantized_model(fp32: dict[str, Any], example: torch.Tensor, device: str | torch.device = "cpu") -> nn.Module:
    """Convert an FP32 checkpoint's model on `device` (first/last pinned, found in execution order); no config."""
    return convert(build_model_from_checkpoint(fp32).to(device), QuantPolicy(), example.to(device))


def load_model(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild a checkpoint's model: FP32 as trained, a quantized one with its config active, a supernet in float."""
    if ckpt["kind"] == "fp32":
        return build_model_from_checkpoint(ckpt)
    base = create(ckpt["model_name"], ckpt["num_classes"], ckpt["in_channels"])
    qmodel = convert(base, QuantPolicy(), torch.zeros((2, *ckpt["input_shape"])))
    qmodel.load_state_dict(ckpt["state_dict"])
    if ckpt.get("config"):
        set_config(qmodel, SubnetConfig.from_json(ckpt["config"]))
    return qmodel
