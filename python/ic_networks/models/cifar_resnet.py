"""Residual networks for CIFAR-10 (32x32 inputs, paper Table 4), plain and IC: SE-ResNet-18/50 and
ResNeXt-29 (2x64d).

All share the CIFAR stem (3x3 conv, 64 channels, stride 1, no max pool), stages that halve the
grid after the first, a 1x1 conv + BN projection shortcut where the shape changes, global average
pool and one linear layer.

* SE-ResNet-18: basic blocks (2, 2, 2, 2) of widths 64..512, squeeze-excitation (reduction 16) on
  the residual branch before the addition (Hu et al.).
* SE-ResNet-50: bottlenecks (3, 4, 6, 3), widths 64..512, expansion 4, squeeze-excitation.
* ResNeXt-29 2x64d (Xie et al.): three stages of three bottlenecks, cardinality 2 and bottleneck
  width 64 (inner widths 128, 256, 512 as a grouped 3x3 conv, outputs 256, 512, 1024).

IC versions follow the ResNet rule (docs/design.md, model table): every 3x3 conv inside the blocks is an IC layer
(grouped ones too: W' follows ``groups``); the stem, the 1x1 convs, the shortcuts and the SE
layers stay plain.
"""

import os
from collections.abc import Sequence

from torch import Tensor, nn

from .._checks import positive_int
from ._common import build_ic, build_plain

__all__ = [
    "CifarResNet",
    "se_resnet18_cifar",
    "se_resnet50_cifar",
    "resnext29_2x64d_cifar",
    "ic_se_resnet18_cifar",
    "ic_se_resnet50_cifar",
    "ic_resnext29_2x64d_cifar",
]

Path = str | os.PathLike


def _conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(out_channels)]


class SqueezeExcitation(nn.Module):
    """``x * sigmoid(fc2(relu(fc1(avgpool(x)))))`` with a hidden width of ``channels // reduction``."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(channels // reduction, channels)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        w = self.gate(self.fc2(self.relu(self.fc1(self.pool(x).flatten(1)))))
        return x * w[:, :, None, None]


class Block(nn.Module):
    """Residual block ``relu(branch(x) + shortcut(x))``.

    ``width=None``: basic block (3x3, 3x3). Otherwise a bottleneck (1x1 to ``width``, grouped 3x3,
    1x1 to ``out_channels``). ``se``: squeeze-excitation at the end of the branch.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        width: int | None = None,
        groups: int = 1,
        se: bool = False,
    ) -> None:
        super().__init__()
        if width is None:
            layers = _conv_bn(in_channels, out_channels, 3, stride) + [nn.ReLU(inplace=True)]
            layers += _conv_bn(out_channels, out_channels, 3)
        else:
            layers = _conv_bn(in_channels, width, 1) + [nn.ReLU(inplace=True)]
            layers += _conv_bn(width, width, 3, stride, groups) + [nn.ReLU(inplace=True)]
            layers += _conv_bn(width, out_channels, 1)
        if se:
            layers.append(SqueezeExcitation(out_channels))
        self.branch = nn.Sequential(*layers)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(*_conv_bn(in_channels, out_channels, 1, stride))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.branch(x) + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR residual network; ``stages`` lists ``(blocks, out_channels, width or None)`` per stage.

    The first stage keeps the 32x32 grid, each later one starts with a stride-2 block.
    """

    def __init__(self, stages: Sequence[tuple], num_classes: int = 10, groups: int = 1, se: bool = False) -> None:
        super().__init__()
        num_classes = positive_int("num_classes", num_classes)
        self.stem = nn.Sequential(*_conv_bn(3, 64, 3), nn.ReLU(inplace=True))
        layers, in_channels = [], 64
        for i, (n, out_channels, width) in enumerate(stages):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(Block(in_channels, out_channels, stride, width, groups, se))
                in_channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


_SPECS = {
    "se_resnet18": dict(stages=[(2, 64, None), (2, 128, None), (2, 256, None), (2, 512, None)], se=True),
    "se_resnet50": dict(stages=[(3, 256, 64), (4, 512, 128), (6, 1024, 256), (3, 2048, 512)], se=True),
    "resnext29_2x64d": dict(stages=[(3, 256, 128), (3, 512, 256), (3, 1024, 512)], groups=2),
}


def _in_blocks(name: str, module: nn.Module) -> bool:
    return name.startswith("layers.")


def _plain(arch: str, weights, num_classes: int) -> CifarResNet:
    return build_plain(lambda: CifarResNet(num_classes=num_classes, **_SPECS[arch]), weights, num_classes)


def _ic(arch: str, weights, num_classes: int, alpha, alpha_mode) -> CifarResNet:
    make = lambda: CifarResNet(num_classes=num_classes, **_SPECS[arch])  # noqa: E731
    return build_ic(make, weights, None, num_classes, alpha, alpha_mode, (3,), _in_blocks)


def se_resnet18_cifar(weights: Path | None = None, num_classes: int = 10) -> CifarResNet:
    """Plain SE-ResNet-18 for CIFAR-10."""
    return _plain("se_resnet18", weights, num_classes)


def se_resnet50_cifar(weights: Path | None = None, num_classes: int = 10) -> CifarResNet:
    """Plain SE-ResNet-50 for CIFAR-10."""
    return _plain("se_resnet50", weights, num_classes)


def resnext29_2x64d_cifar(weights: Path | None = None, num_classes: int = 10) -> CifarResNet:
    """Plain ResNeXt-29 (2x64d) for CIFAR-10."""
    return _plain("resnext29_2x64d", weights, num_classes)


def ic_se_resnet18_cifar(
    weights: Path | None = None,
    num_classes: int = 10,
    *,
    alpha: float | None = None,
    alpha_mode: str | None = None,
) -> CifarResNet:
    """IC-SE-ResNet-18 for CIFAR-10: the blocks' 3x3 convs are IC layers."""
    return _ic("se_resnet18", weights, num_classes, alpha, alpha_mode)


def ic_se_resnet50_cifar(
    weights: Path | None = None,
    num_classes: int = 10,
    *,
    alpha: float | None = None,
    alpha_mode: str | None = None,
) -> CifarResNet:
    """IC-SE-ResNet-50 for CIFAR-10: the bottlenecks' 3x3 convs are IC layers."""
    return _ic("se_resnet50", weights, num_classes, alpha, alpha_mode)


def ic_resnext29_2x64d_cifar(
    weights: Path | None = None,
    num_classes: int = 10,
    *,
    alpha: float | None = None,
    alpha_mode: str | None = None,
) -> CifarResNet:
    """IC-ResNeXt-29 (2x64d) for CIFAR-10: the bottlenecks' grouped 3x3 convs are IC layers."""
    return _ic("resnext29_2x64d", weights, num_classes, alpha, alpha_mode)
