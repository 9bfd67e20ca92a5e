"""Small networks for 28x28 grayscale images (Fashion-MNIST) and their IC versions, sized for a 2-core CPU.

``FmnistCNN`` (the demo's network) has no residual path; ``FmnistResNet`` is a CIFAR-style
ResNet (He et al.'s ResNet-20 family, depth 6n+2) adapted to 28x28, the kind of network the paper
uses, for the from-scratch study (docs/fidelity.md).

Layout (decision): three stages of ``3x3 conv (no bias) -> BatchNorm -> ReLU -> 2x2 max-pool`` with
16, 32 and 64 channels (28 -> 14 -> 7 -> 3), then a linear classifier on the 64x3x3 features:
29,178 parameters and about 1.9M multiply-adds per image.

``ic_fmnist_cnn`` is ``ic_networks.convert(fmnist_cnn())``: every 3x3 conv, the first one too,
becomes an :class:`~ic_networks.IcConv2d`, so checkpoints of a converted plain model and of an
IC model trained from scratch share their keys. Builders follow the zoo's conventions
(:mod:`ic_networks.models._common`): ``weights`` is None or a local state_dict path; alpha defaults
to 1 (fixed) from scratch and 0 (learnable) on weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from torch import Tensor, nn

from .._checks import positive_int
from ._common import build_ic, build_plain

__all__ = ["FmnistCNN", "FmnistResNet", "fmnist_cnn", "ic_fmnist_cnn", "fmnist_resnet", "ic_fmnist_resnet"]

Path = str | os.PathLike


class FmnistCNN(nn.Module):
    """``features`` (three conv stages) then ``classifier`` (linear), for (N, C, 28, 28) inputs."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        positive_int("num_classes", num_classes)
        positive_int("in_channels", in_channels)
        if len(widths) != 3:
            raise ValueError(f"widths: expected three positive ints, got {widths!r}")
        layers, c = [], in_channels
        for w in widths:
            layers += [
                nn.Conv2d(c, positive_int("widths", w), 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * 3 * 3, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != (28, 28):
            raise ValueError(f"x: expected a (N, C, 28, 28) batch, got shape {tuple(x.shape)}")
        return self.classifier(self.features(x).flatten(1))


def fmnist_cnn(weights: Path | None = None, num_classes: int = 10, in_channels: int = 1) -> FmnistCNN:
    """The plain CNN."""
    return build_plain(lambda: FmnistCNN(num_classes, in_channels), weights, num_classes)


def ic_fmnist_cnn(
    weights: Path | None = None,
    num_classes: int = 10,
    in_channels: int = 1,
    *,
    alpha: float | None = None,
    alpha_mode: str | None = None,
) -> FmnistCNN:
    """The IC CNN: every 3x3 conv is an IC layer (alpha 1, fixed, from scratch)."""
    return build_ic(lambda: FmnistCNN(num_classes, in_channels), weights, None, num_classes, alpha, alpha_mode)


class _BasicBlock(nn.Module):
    """``3x3 conv -> BN -> ReLU -> 3x3 conv -> BN``, plus the shortcut (1x1 conv + BN when the
    shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu_()
        return (self.bn2(self.conv2(out)) + self.shortcut(x)).relu_()


class FmnistResNet(nn.Module):
    """CIFAR-style ResNet of depth ``6n + 2`` for (N, C, 28, 28) inputs: a 3x3 stem, three stages of
    ``n`` basic blocks with ``widths`` channels at 28x28, 14x14 and 7x7, global average pooling and
    a linear classifier. Depth 8 with widths (16, 32, 64): 77,754 parameters."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, depth: int = 8, widths: Sequence[int] = (16, 32, 64)
    ) -> None:
        super().__init__()
        positive_int("num_classes", num_classes)
        positive_int("in_channels", in_channels)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth: expected 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth!r}")
        if len(widths) != 3:
            raise ValueError(f"widths: expected three positive ints, got {widths!r}")
        n = (depth - 2) // 6
        c = positive_int("widths", widths[0])
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
        )
        blocks = []
        for i, w in enumerate(widths):
            for j in range(n):
                blocks.append(_BasicBlock(c, positive_int("widths", w), 2 if (i > 0 and j == 0) else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != (28, 28):
            raise ValueError(f"x: expected a (N, C, 28, 28) batch, got shape {tuple(x.shape)}")
        return self.classifier(self.blocks(self.stem(x)).mean((2, 3)))


def fmnist_resnet(
    weights: Path | None = None, num_classes: int = 10, in_channels: int = 1, depth: int = 8
) -> FmnistResNet:
    """The plain residual network."""
    return build_plain(lambda: FmnistResNet(num_classes, in_channels, depth), weights, num_classes)


def ic_fmnist_resnet(
    weights: Path | None = None,
    num_classes: int = 10,
    in_channels: int = 1,
    depth: int = 8,
    *,
    alpha: float | None = None,
    alpha_mode: str | None = None,
) -> FmnistResNet:
    """The IC residual network: every 3x3 conv is an IC layer (the 1x1 shortcuts stay plain)."""
    return build_ic(
        lambda: FmnistResNet(num_classes, in_channels, depth), weights, None, num_classes, alpha, alpha_mode
    )
