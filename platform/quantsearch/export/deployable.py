"""Whether a backend profile can run what a model quantizes to; refusals are one line naming the layer and form."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from quantsearch.errors import ConfigError
from quantsearch.export.specs import LayerExport
from quantsearch.quant.profiles import BackendProfile, get_profile


@dataclass(frozen=True)
class RuntimeRules:
    """What a target's runtime needs beyond its profile's forms: signed activation types (TFLite, TensorRT) and
    zero zero points on activations (TensorRT's symmetric int8)."""

    signed_activations: bool = False
    zero_point_free_activations: bool = False


# facts about the targets the profiles name (profiles.yaml lists forms, not integer types)
RULES = {"tensorrt-int8": RuntimeRules(True, True), "tflite-int8": RuntimeRules(True, False)}


def _forms(profile: BackendProfile) -> str:
    w, a = profile.weight_forms(), profile.act_forms()
    return (f"weights {sorted({f.bits for f in w})}-bit {'/'.join(profile.weight_granularity)} "
            f"{'/'.join('sym' if s else 'asym' for s in profile.weight_symmetric)}, activations "
            f"{sorted({f.bits for f in a})}-bit {'/'.join('sym' if s else 'asym' for s in profile.act_symmetric)}")


def check_profile(specs: Iterable[LayerExport], name: str | None) -> RuntimeRules:
    """Raise ConfigError on the first layer `name`'s target cannot run; returns the target's runtime rules."""
    if name is None:
        return RuntimeRules()
    profile = get_profile(name)
    rules = RULES.get(profile.name, RuntimeRules())
    for spec in specs:
        cfg = spec.config
        if not profile.supports(cfg.weight, cfg.activation):
            raise ConfigError(f"profile '{profile.name}' cannot run layer {spec.name} at {cfg.short()}; it runs "
                              f"{_forms(profile)}: export a config the profile lists (`quantsearch profiles list`)")
        if rules.zero_point_free_activations and spec.act.unsigned:
            raise ConfigError(f"profile '{profile.name}' runs signed activations with zero point 0 only, but layer "
                              f"{spec.name}'s input is on the unsigned grid [0, {spec.act.qmax}] (calibration found it "
                              "non-negative); export with another profile, e.g. 'generic'")
    return rules
