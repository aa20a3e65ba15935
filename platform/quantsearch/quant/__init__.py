"""The quantization core: forms, fake-quant maths, calibrators, elastic quantizers, layers, conversion."""

from quantsearch.quant.calibrators import (
    CALIBRATORS,
    Calibrator,
    MaxAbsCalibrator,
    MSECalibrator,
    get_calibrator,
)
from quantsearch.quant.convert import (
    QuantPolicy,
    calibrate_model,
    convert,
    disable_quant,
    quant_layers,
    set_layer_configs,
)
from quantsearch.quant.fakequant import fake_quant, grad_scale, lsq_grad_factor, round_ste
from quantsearch.quant.forms import ALL_BITS, LayerConfig, QuantForm, grid_for, int_grid
from quantsearch.quant.layers import QuantConv2d, QuantLinear
from quantsearch.quant.profiles import BackendProfile, get_profile, list_profiles
from quantsearch.quant.quantizer import ElasticQuantizer
from quantsearch.quant.torchao_observers import TorchAOHistogram, TorchAOMinMax

# torch's own observers, registered beside ours (torch.ao itself is imported only when one is used)
CALIBRATORS.update({c.name: c for c in (TorchAOMinMax, TorchAOHistogram)})

__all__ = [
    "ALL_BITS", "CALIBRATORS", "BackendProfile", "Calibrator", "ElasticQuantizer", "LayerConfig",
    "MSECalibrator", "MaxAbsCalibrator", "QuantConv2d", "QuantForm", "QuantLinear", "QuantPolicy",
    "calibrate_model", "convert", "disable_quant", "fake_quant", "get_calibrator", "get_profile", "grad_scale",
    "grid_for", "int_grid", "list_profiles", "lsq_grad_factor", "quant_layers", "round_ste", "set_layer_configs",
]
