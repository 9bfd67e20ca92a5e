"""VGG-16/19 with BatchNorm for CIFAR-10 (32x32 inputs, paper Table 4), plain and IC.

The common CIFAR variant: 3x3 conv (padding 1) + BN + ReLU stacks with 2x2 max pools, five pools
bring 32x32 down to 1x1, then a global average pool and one linear layer 512 -> ``num_classes``.

**Decision:** in the IC versions every 3x3 conv is an IC layer, the first one too (VGG has no
separate stem).
"""

import os

from torch import Tensor, nn

from .._checks import positive_int
from ._common import build_ic, build_plain

__all__ = ["CifarVGG", "vgg16_cifar", "vgg19_cifar", "ic_vgg16_cifar", "ic_vgg19_cifar"]

Path = str | os.PathLike

_CONFIGS = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    """VGG with BatchNorm for 32x32 inputs; ``config`` lists conv widths and ``'M'`` (max pool)."""

    def __init__(self, config: list[int | str], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        num_classes = positive_int("num_classes", num_classes)
        layers: list[nn.Module] = []
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [
                    nn.Conv2d(in_channels, v, 3, padding=1, bias=False),
                    nn.BatchNorm2d(v),
                    nn.ReLU(inplace=True),
                ]
                in_channels = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # 1x1 already at 32x32; lets larger inputs through
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg16_cifar(weights: Path | None = None, num_classes: int = 10) -> CifarVGG:
    """Plain VGG-16 (BN) for CIFAR-10."""
    return build_plain(lambda: CifarVGG(_CONFIGS[16], num_classes), weights, num_classes)


def vgg19_cifar(weights: Path | None = None, num_classes: int = 10) -> CifarVGG:
    """Plain VGG-19 (BN) for CIFAR-10."""
    return build_plain(lambda: CifarVGG(_CONFIGS[19], num_classes), weights, num_classes)


def ic_vgg16_cifar(
    weights: Path | None = None,
    num_classes: int = 10,
    *,
    alpha: float | None = None,
    alpha_mode: str | None = None,
) -> CifarVGG:
    """IC-VGG-16 (BN) for CIFAR-10: every 3x3 conv is an IC layer."""
    return build_ic(lambda: CifarVGG(_CONFIGS[16], num_classes), weights, None, num_classes, alpha, alpha_mode)


def ic_vgg19_cifar(
    weights: Path | None = None,
    num_classes: int = 10,
    *,
    alpha: float | None = None,
    alpha_mode: str | None = None,
) -> CifarVGG:
    """IC-VGG-19 (BN) for CIFAR-10: every 3x3 conv is an IC layer."""
    return build_ic(lambda: CifarVGG(_CONFIGS[19], num_classes), weights, None, num_classes, alpha, alpha_mode)
