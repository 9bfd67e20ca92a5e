"""A small CNN for 28x28 grayscale images (Fashion-MNIST) and its IC version, sized for a 2-core CPU.

Layout (decision): three stages of ``3x3 conv (no bias) -> BatchNorm -> ReLU -> 2x2 max-pool`` with
16, 32 and 64 channels (28 -> 14 -> 7 -> 3), then a linear classifier on the 64x3x3 features:
about 29k parameters and 1.9M multiply-adds per image.

``ic_fmnist_cnn`` replaces every 3x3 conv (the first one too) with :class:`~ic_networks.IcConv2d`
with ``alpha = 1`` (fixed), the from-scratch setting of the paper's eq. 6. Its module names and
parameter names are those of ``ic_networks.convert(fmnist_cnn())``, so checkpoints of either load
into the other architecture's IC form.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..nn import IcConv2d

__all__ = ["FmnistCNN", "fmnist_cnn", "ic_fmnist_cnn"]


class FmnistCNN(nn.Module):
    """``features`` (conv stages) then ``classifier`` (linear); ``ic=True`` builds IC convs."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64),
        ic: bool = False,
        alpha: float = 1.0,
        alpha_mode: str = "fixed",
    ) -> None:
        super().__init__()
        for name, v in (("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        if len(widths) != 3 or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths: expected three positive ints, got {widths!r}")
        layers = []
        c = in_channels
        for w in widths:
            if ic:
                conv = IcConv2d(c, w, 3, padding=1, bias=False, alpha=alpha, alpha_mode=alpha_mode)
            else:
                conv = nn.Conv2d(c, w, 3, padding=1, bias=False)
            layers += [conv, nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * 3 * 3, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-2:] != (28, 28):
            raise ValueError(f"x: expected a (N, C, 28, 28) batch, got shape {tuple(x.shape)}")
        return self.classifier(self.features(x).flatten(1))


def fmnist_cnn(num_classes: int = 10, in_channels: int = 1, weights=None) -> FmnistCNN:
    """The plain CNN. ``weights``: a state_dict or a path to one (no downloads)."""
    return _load(FmnistCNN(num_classes, in_channels), weights)


def ic_fmnist_cnn(num_classes: int = 10, in_channels: int = 1, weights=None, alpha: float = 1.0, alpha_mode: str = "fixed") -> FmnistCNN:
    """The IC CNN: every 3x3 conv is an ``IcConv2d`` (``alpha`` 1, fixed, by default)."""
    return _load(FmnistCNN(num_classes, in_channels, ic=True, alpha=alpha, alpha_mode=alpha_mode), weights)


def _load(model: nn.Module, weights) -> nn.Module:
    if weights is None:
        return model
    if not isinstance(weights, dict):
        import torch

        weights = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(weights)
    return model
