"""The one calibrator registry: every name a user can type (`--method`, `init_calibrator`, DQSS candidates).

Per-tensor calibrators turn one tensor into a scale (and offset) for a form; EasyQuant is layer-wise: it starts
from two per-tensor calibrators and searches the scales that keep a layer's output closest to float. The
registry is read-only: it lists everything at import, nothing edits it later.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from quantsearch._util import suggest
from quantsearch.errors import ConfigError
from quantsearch.quant.calibrators import ADMMCalibrator, Calibrator, KLCalibrator, MaxAbsCalibrator, MSECalibrator
from quantsearch.quant.torch_observers import TorchHistogram, TorchMinMax


@dataclass(frozen=True)
class CalibratorInfo:
    """A registered calibration method: what it is, and how to build it (per-tensor) or start it (layer-wise)."""

    name: str
    summary: str
    make: Callable[[], Calibrator] | None = None  # per-tensor calibrators
    layerwise_init: tuple[str, str] | None = None  # layer-wise: the (activation, weight) calibrators it starts from

    @property
    def layerwise(self) -> bool:
        """True for methods that search a layer's output (EasyQuant), not one tensor's values."""
        return self.make is None


CALIBRATORS: Mapping[str, CalibratorInfo] = MappingProxyType({c.name: c for c in (
    CalibratorInfo("maxabs", "clip at the observed extremes", MaxAbsCalibrator),
    CalibratorInfo("mse", "clip range minimising the quantization MSE (EQ-Net's initialisation)", MSECalibrator),
    CalibratorInfo("kl", "TensorRT entropy calibration", KLCalibrator),
    CalibratorInfo("admm", "ADMM projection (alternating rounding and least squares)", ADMMCalibrator),
    # EasyQuant starts from KL (activations) and per-channel MaxAbs (weights), as the paper does
    CalibratorInfo("easyquant", "layer-wise cosine-similarity scale search", layerwise_init=("kl", "maxabs")),
    CalibratorInfo("torchao-minmax", "torch.ao MinMaxObserver / PerChannelMinMaxObserver", TorchMinMax),
    CalibratorInfo("torchao-histogram", "torch.ao HistogramObserver (per-channel: PerChannelMinMaxObserver)",
                   TorchHistogram),
)})


def check_calibrator(name: str, layerwise_ok: bool = True) -> str:
    """A registered method name (per-tensor only unless `layerwise_ok`); otherwise one line naming the choices."""
    choices = [n for n, c in CALIBRATORS.items() if layerwise_ok or not c.layerwise]
    if name not in choices:
        what = "calibration method" if layerwise_ok else "per-tensor calibrator"
        why = (f" ('{name}' searches a layer's output, not one tensor)" if name in CALIBRATORS else
               suggest(name, choices))
        raise ConfigError(f"unknown {what} '{name}'{why}; choose from {', '.join(choices)}")
    return name


def get_calibrator(name: str) -> Calibrator:
    """A new per-tensor calibrator by registered name."""
    make = CALIBRATORS[check_calibrator(name, layerwise_ok=False)].make
    assert make is not None
    return make()


def tensor_calibrators(method: str) -> tuple[Calibrator, Calibrator]:
    """The (activation, weight) per-tensor calibrators a method sets scales with first (EasyQuant: its start)."""
    info = CALIBRATORS[check_calibrator(method)]
    if info.layerwise_init is not None:
        return get_calibrator(info.layerwise_init[0]), get_calibrator(info.layerwise_init[1])
    return get_calibrator(method), get_calibrator(method)


__all__ = ["CALIBRATORS", "CalibratorInfo", "check_calibrator", "get_calibrator", "tensor_calibrators"]
