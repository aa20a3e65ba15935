"""Compact MobileNetV2-style net: inverted residuals with depthwise 3x3 convs, for 28x28 inputs."""

from __future__ import annotations

import torch
from torch import nn


def _cbr(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=False))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise 3x3 -> project 1x1 (linear); residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_cbr(cin, hidden, 1))
        layers += [_cbr(hidden, hidden, 3, stride, groups=hidden), _cbr(hidden, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block forward with optional float residual add."""
        out = self.block(x)
        return x + out if self.use_res else out


class CompactMobileNetV2(nn.Module):
    """Stem 3x3/16, inverted residual stages (t, c, n, s), 1x1 head conv, pool, linear."""

    SETTINGS = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 1))

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [_cbr(in_channels, 16, 3)]
        cin = 16
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_cbr(cin, 128, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
