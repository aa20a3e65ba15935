"""The quantization core: forms, fake-quant maths, calibrators, elastic quantizers, layers, conversion."""

from quantsearch.quant.calibrate import calibrate, calibrate_active, calibrate_model, collect_inputs
from quantsearch.quant.calibrators import Calibrator, MaxAbsCalibrator, MSECalibrator
from quantsearch.quant.convert import (
    QuantInfo,
    QuantPolicy,
    convert,
    disable_quant,
    quant_info,
    quant_layers,
    set_layer_configs,
    split_params,
)
from quantsearch.quant.fakequant import fake_quant, grad_scale, lsq_grad_factor, round_ste
from quantsearch.quant.forms import ALL_BITS, LayerConfig, QuantForm, grid_for, int_grid
from quantsearch.quant.layers import QuantConv2d, QuantLinear
from quantsearch.quant.profiles import BackendProfile, get_profile, list_profiles
from quantsearch.quant.quantizer import ElasticQuantizer
from quantsearch.quant.registry import CALIBRATORS, CalibratorInfo, check_calibrator, get_calibrator

__all__ = [
    "ALL_BITS",
    "CALIBRATORS",
    "BackendProfile",
    "Calibrator",
    "CalibratorInfo",
    "ElasticQuantizer",
    "LayerConfig",
    "MSECalibrator",
    "MaxAbsCalibrator",
    "QuantConv2d",
    "QuantForm",
    "QuantInfo",
    "QuantLinear",
    "QuantPolicy",
    "calibrate",
    "calibrate_active",
    "calibrate_model",
    "check_calibrator",
    "collect_inputs",
    "convert",
    "disable_quant",
    "fake_quant",
    "get_calibrator",
    "get_profile",
    "grad_scale",
    "grid_for",
    "int_grid",
    "list_profiles",
    "lsq_grad_factor",
    "quant_info",
    "quant_layers",
    "round_ste",
    "set_layer_configs",
    "split_params",
]
