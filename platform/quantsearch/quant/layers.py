"""Quantized conv / linear layers: the weight and the input each pass through an elastic quantizer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quantsearch.quant.forms import LayerConfig
from quantsearch.quant.quantizer import ElasticQuantizer


def _pair(v: tuple[int, ...]) -> tuple[int, int]:
    """A conv hyper-parameter as the (h, w) pair Conv2d stores it."""
    return (v[0], v[1]) if len(v) > 1 else (v[0], v[0])


class QuantMixin:
    """Shared API of quantized layers: `wq`, `aq`, `pinned`, set_layer_config / layer_config."""

    wq: ElasticQuantizer
    aq: ElasticQuantizer
    pinned: bool

    def set_layer_config(self, cfg: LayerConfig | None) -> None:
        """Quantize with `cfg`, or run in float when None."""
        self.wq.set_form(None if cfg is None else cfg.weight)
        self.aq.set_form(None if cfg is None else cfg.activation)

    def swap_quantizers(self, aq: nn.Module, wq: nn.Module) -> tuple[nn.Module, nn.Module]:
        """Quantize the input with `aq` and the weight with `wq` instead (DQSS swaps in its mixtures this way);
        returns the (input, weight) quantizers they replace. Anything with a `form` and a forward will do."""
        old = (self.aq, self.wq)
        self.aq = aq  # type: ignore[assignment]  # a stand-in with the quantizer's interface (form, forward)
        self.wq = wq  # type: ignore[assignment]
        return old

    def layer_config(self) -> LayerConfig | None:
        """The active config, or None when the layer runs in float."""
        if self.wq.form is None or self.aq.form is None:
            return None
        return LayerConfig(self.wq.form, self.aq.form)


class QuantConv2d(nn.Conv2d, QuantMixin):
    """nn.Conv2d (grouped and depthwise included) with fake-quantized weight and input."""

    def _init_quant(self) -> None:
        self.wq = ElasticQuantizer("weight", self.out_channels)
        self.aq = ElasticQuantizer("activation")
        self.pinned = False

    @classmethod
    def from_float(cls, m: nn.Conv2d) -> QuantConv2d:
        """Copy a float conv's hyper-parameters and weights."""
        q = cls(m.in_channels, m.out_channels, _pair(m.kernel_size), _pair(m.stride),
                m.padding if isinstance(m.padding, str) else _pair(m.padding), _pair(m.dilation), m.groups,
                m.bias is not None, m.padding_mode, device=m.weight.device, dtype=m.weight.dtype)
        with torch.no_grad():
            q.weight.copy_(m.weight)
            if m.bias is not None and q.bias is not None:
                q.bias.copy_(m.bias)
        q._init_quant()
        q.to(m.weight.device)  # the quantizer tables live where the weights do
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution of the quantized input with the quantized weight."""
        out: torch.Tensor = self._conv_forward(self.aq(x), self.wq(self.weight), self.bias)
        return out


class QuantLinear(nn.Linear, QuantMixin):
    """nn.Linear with fake-quantized weight and input."""

    def _init_quant(self) -> None:
        self.wq = ElasticQuantizer("weight", self.out_features)
        self.aq = ElasticQuantizer("activation")
        self.pinned = False

    @classmethod
    def from_float(cls, m: nn.Linear) -> QuantLinear:
        """Copy a float linear layer's weights."""
        q = cls(m.in_features, m.out_features, m.bias is not None, device=m.weight.device, dtype=m.weight.dtype)
        with torch.no_grad():
            q.weight.copy_(m.weight)
            if m.bias is not None:
                q.bias.copy_(m.bias)
        q._init_quant()
        q.to(m.weight.device)  # the quantizer tables live where the weights do
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Linear map of the quantized input with the quantized weight."""
        return F.linear(self.aq(x), self.wq(self.weight), self.bias)


QUANT_LAYER_TYPES = (QuantConv2d, QuantLinear)
QuantLayer = QuantConv2d | QuantLinear
