"""Create models by name; `tv:<name>` adapts any torchvision classifier's stem and head to the data."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from torch import nn

from quantsearch._util import suggest
from quantsearch.errors import ModelError
from quantsearch.models.mobilenet import CompactMobileNetV2
from quantsearch.models.resnet import CompactResNet


def resnet18_small(num_classes: int, in_channels: int) -> nn.Module:
    """torchvision's ResNet-18 for small (CIFAR-size) images: a 3x3 stride-1 stem and no max-pool, so a 32x32
    input reaches the last stage at 4x4 instead of 1x1 (the ImageNet stem, `tv:resnet18`, divides by 32)."""
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()  # the 32x32 input keeps its resolution into layer1
    return model


_REFERENCE: dict[str, tuple[Callable[[int, int], nn.Module], str]] = {
    "resnet8": (lambda nc, ic: CompactResNet(nc, ic), "compact ResNet, 3 stages x 1 block, 16/32/64"),
    "resnet14": (lambda nc, ic: CompactResNet(nc, ic, blocks=2), "compact ResNet, 3 stages x 2 blocks"),
    "mobilenetv2-tiny": (lambda nc, ic: CompactMobileNetV2(nc, ic), "compact MobileNetV2, depthwise convs"),
    "resnet18-cifar": (resnet18_small, "torchvision ResNet-18, 3x3 stride-1 stem and no max-pool: for 32x32-size "
                                       "images"),
}


def _torchvision_names() -> list[str]:
    from torchvision import models as tvm

    return sorted(tvm.list_models(module=tvm))


def list_models(include_torchvision: bool = True) -> dict[str, str]:
    """Names of creatable models with a one-line description."""
    out = {name: desc for name, (_, desc) in _REFERENCE.items()}
    if include_torchvision:
        for name in _torchvision_names():
            out[f"tv:{name}"] = "torchvision classifier, stem/head adapted to the data"
    return out


def _adapt_stem(model: nn.Module, in_channels: int) -> None:
    for parent in model.modules():
        for cname, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != in_channels:
                    pair = cast(tuple[int, int], child.kernel_size), cast(tuple[int, int], child.stride)
                    padding = cast(str | tuple[int, int], child.padding)
                    setattr(parent, cname, nn.Conv2d(
                        in_channels, child.out_channels, pair[0], pair[1], padding,
                        cast(tuple[int, int], child.dilation), child.groups if child.groups == 1 else in_channels,
                        child.bias is not None, child.padding_mode))
                return


def create(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """Build a model for `num_classes` classes and `in_channels`-channel images (random weights)."""
    if name in _REFERENCE:
        return _REFERENCE[name][0](num_classes, in_channels)
    if name.startswith("tv:"):
        tv_name = name[3:]
        names = _torchvision_names()
        if tv_name not in names:
            raise ModelError(f"unknown torchvision model '{tv_name}'{suggest(tv_name, names)}; "
                             "see `quantsearch models list`")
        from torchvision import models as tvm

        kwargs: dict[str, object] = {"weights": None, "num_classes": num_classes}
        if tv_name.startswith(("inception", "googlenet")):
            kwargs["aux_logits"] = False
            kwargs["init_weights"] = True
        try:
            model = tvm.get_model(tv_name, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"torchvision model '{tv_name}' cannot be built as a classifier: {exc}") from exc
        _adapt_stem(model, in_channels)
        return model
    known = list(_REFERENCE) + [f"tv:{n}" for n in _torchvision_names()]
    raise ModelError(f"unknown model '{name}'{suggest(name, known)}; see `quantsearch models list`")


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
