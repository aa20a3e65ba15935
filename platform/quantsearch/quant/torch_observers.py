"""torch's own PTQ observers (torch.ao.quantization: MinMax, Histogram) behind the Calibrator interface.

They are the baseline DQSS is measured against: the same quantization points, grids and bits as every other
calibrator here, only the scale/zero point come from torch's observer. This wraps torch.ao (part of torch), not
the separate torchao package; the registry keeps the names users type, `torchao-minmax` and `torchao-histogram`.
torch 2.14 deprecates torch.ao quantization (moved to torchao) but it still works; the warning is silenced here.
"""

from __future__ import annotations

import warnings

import torch

from quantsearch.quant.calibrators import Calibrator
from quantsearch.quant.forms import QuantForm, grid_for


class TorchObserverCalibrator(Calibrator):
    """Scale/zero point from a torch.ao observer fed the same tensor; per-channel forms use
    PerChannelMinMaxObserver (torch's default for weights) whatever the per-tensor observer is."""

    observer = "minmax"

    def scale_offset(self, x: torch.Tensor, form: QuantForm, nonneg: bool = False, kind: str | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Observe x once, return the observer's qparams mapped onto our grid."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import observer as obs

            qmin, qmax = grid_for(form, nonneg)
            # our symmetric forms on an unsigned grid (non-negative input) have zero point 0: torch's affine
            # scheme gives exactly that for data >= 0, its symmetric quint8 scheme would centre the grid instead
            symmetric = form.symmetric and qmin < 0
            dtype = torch.qint8 if qmin < 0 else torch.quint8
            ob: obs.ObserverBase
            if form.per_channel:
                ob = obs.PerChannelMinMaxObserver(
                    ch_axis=0, qscheme=torch.per_channel_symmetric if symmetric else torch.per_channel_affine,
                    dtype=dtype, quant_min=qmin, quant_max=qmax)
            else:
                qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
                if self.observer == "histogram":
                    ob = obs.HistogramObserver(qscheme=qscheme, dtype=dtype, quant_min=qmin, quant_max=qmax)
                else:
                    ob = obs.MinMaxObserver(qscheme=qscheme, dtype=dtype, quant_min=qmin, quant_max=qmax)
            t = x.detach().float()
            ob(t if form.per_channel else t.reshape(-1))
            scale, zp = ob.calculate_qparams()
        scale = scale.float().reshape(-1)
        if form.symmetric:
            return scale, None
        return scale, zp.float().reshape(-1)


class TorchMinMax(TorchObserverCalibrator):
    """torch.ao MinMaxObserver (per-tensor) / PerChannelMinMaxObserver (per-channel)."""

    name = "torchao-minmax"
    observer = "minmax"


class TorchHistogram(TorchObserverCalibrator):
    """torch.ao HistogramObserver (per-tensor; its L2 search over histogram bins)."""

    name = "torchao-histogram"
    observer = "histogram"
