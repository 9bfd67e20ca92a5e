"""A small CNN for 28x28 grayscale images (Fashion-MNIST) and its IC version, sized for a 2-core CPU.

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
from typing import Optional, Sequence, Union

from torch import Tensor, nn

from .._checks import positive_int
from ._common import build_ic, build_plain

__all__ = ["FmnistCNN", "fmnist_cnn", "ic_fmnist_cnn"]

Path = Union[str, os.PathLike]


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
            layers += [nn.Conv2d(c, positive_int("widths", w), 3, padding=1, bias=False), nn.BatchNorm2d(w),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * 3 * 3, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != (28, 28):
            raise ValueError(f"x: expected a (N, C, 28, 28) batch, got shape {tuple(x.shape)}")
        return self.classifier(self.features(x).flatten(1))


def fmnist_cnn(weights: Optional[Path] = None, num_classes: int = 10, in_channels: int = 1) -> FmnistCNN:
    """The plain CNN."""
    return build_plain(lambda: FmnistCNN(num_classes, in_channels), weights, num_classes)


def ic_fmnist_cnn(weights: Optional[Path] = None, num_classes: int = 10, in_channels: int = 1, *,
                  alpha: Optional[float] = None, alpha_mode: Optional[str] = None) -> FmnistCNN:
    """The IC CNN: every 3x3 conv is an IC layer (alpha 1, fixed, from scratch)."""
    return build_ic(lambda: FmnistCNN(num_classes, in_channels), weights, None, num_classes, alpha, alpha_mode)
