"""MobileNet (v1) for CIFAR-10 (32x32 inputs, paper Table 4), plain and IC.

The common CIFAR variant: a 3x3 stem (32 channels, stride 1), 13 depthwise-separable blocks
(64, 128/2, 128, 256/2, 256, 512/2, 5 x 512, 1024/2, 1024), global average pool, one linear layer.

**The IC layer of MobileNet is a depthwise + pointwise pair**, as in the paper. A block computes
``relu(bn2(pw(relu(bn1(dw(x))))))``; in :class:`IcDepthwiseSeparable` the pair is one IC layer::

    Y   = pw(relu(bn1(dw(X))))                  the pair's own output, as in the plain block
    S   = boxsum(X)                             with dw's kernel, stride, padding and dilation
    out = Y + alpha * relu(Y - conv1x1(S, W') + b1)          then bn2 and relu as before

**Decisions.** (1) Y keeps the BN + ReLU between dw and pw, so the block is the plain block
exactly when alpha = 0: a plain checkpoint loads with only the IC keys missing and the IC model
starts bit-identical to it (the WLD recipe); dropping them would turn the pair into one linear
conv, but it would no longer be the paper's MobileNet. (2) The pair maps Cin to Cout channels
with a full (groups = 1) receptive field, so W' has shape (Cout, Cin, 1, 1) as for a dense
k x k conv; on the output grid it costs as many multiply-adds as the pointwise conv. (3) Y is not
one convolution, so the fused Rust op (``ic_conv2d``) does not apply; the collision term is built
from the Rust box sum (``ic_networks.functional.boxsum``, differentiable) and three cheap torch
ops. Every tensor gets its gradient, W' and b1 zeros (not None) while alpha = 0.
"""

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as icf
from .._checks import positive_int
from ..nn import ALPHA_MODES, LoadsPlainState
from ._common import build_plain, load_local, resolve_alpha, resolve_weights

__all__ = [
    "DepthwiseSeparable",
    "IcDepthwiseSeparable",
    "CifarMobileNet",
    "mobilenet_cifar",
    "ic_mobilenet_cifar",
]

Path = str | os.PathLike

_CONFIG = [64, (128, 2), 128, (256, 2), 256, (512, 2), 512, 512, 512, 512, 512, (1024, 2), 1024]


class DepthwiseSeparable(nn.Module):
    """``relu(bn2(pw(relu(bn1(dw(x))))))``: a k x k depthwise conv and a 1x1 pointwise conv."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> None:
        super().__init__()
        self.dw = nn.Conv2d(
            in_channels, in_channels, kernel_size, stride, kernel_size // 2, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def pair(self, x: Tensor) -> Tensor:
        """Y: the output of the depthwise + pointwise pair, before ``bn2``."""
        return self.pw(F.relu(self.bn1(self.dw(x))))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn2(self.pair(x)))


class IcDepthwiseSeparable(LoadsPlainState, DepthwiseSeparable):
    """A :class:`DepthwiseSeparable` block whose dw + pw pair is one IC layer (see the module doc).

    Extra parameters, named as in ``IcConv2d``: ``adjust_weight`` (Cout, Cin, 1, 1),
    ``adjust_bias`` (Cout,) and ``alpha`` (a parameter if ``alpha_mode='learnable'``, else a buffer).
    ``kernel_size`` / ``stride`` / ``padding`` / ``dilation`` are the box sum's (dw's). A plain
    :class:`DepthwiseSeparable`'s state_dict loads with alpha = 0, as into ``IcConv2d``.
    """

    plain_key = "pw.weight"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
        alpha: float = 1.0,
        alpha_mode: str = "fixed",
    ) -> None:
        super().__init__(in_channels, out_channels, stride, kernel_size)
        if alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode: expected one of {ALPHA_MODES}, got {alpha_mode!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise TypeError(f"alpha: expected a float, got {type(alpha).__name__}")
        self.alpha_mode = alpha_mode
        self.adjust_weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1))
        self.adjust_bias = nn.Parameter(torch.zeros(out_channels))
        a = torch.tensor(float(alpha))
        if alpha_mode == "learnable":
            self.alpha = nn.Parameter(a)
        else:
            self.register_buffer("alpha", a)
        # W' like IcConv2d's: kaiming-uniform bound with the fan-in of the pair's full k x k kernel.
        bound = 1.0 / math.sqrt(in_channels * kernel_size**2)
        nn.init.uniform_(self.adjust_weight, -bound, bound)

    kernel_size = property(lambda self: self.dw.kernel_size)
    stride = property(lambda self: self.dw.stride)
    padding = property(lambda self: self.dw.padding)
    dilation = property(lambda self: self.dw.dilation)

    def set_alpha(self, value: float) -> None:
        """Sets alpha in place (keeps it a parameter or a buffer)."""
        with torch.no_grad():
            self.alpha.fill_(float(value))

    def pair(self, x: Tensor) -> Tensor:
        y = super().pair(x)
        s = icf.boxsum(x, self.kernel_size, self.stride, self.padding, self.dilation)
        z = y - F.conv2d(s, self.adjust_weight) + self.adjust_bias.view(1, -1, 1, 1)
        return y + self.alpha * F.relu(z)

    def extra_repr(self) -> str:
        return f"alpha={float(self.alpha):g}, alpha_mode={self.alpha_mode}"


class CifarMobileNet(nn.Module):
    """MobileNet v1 for 32x32 inputs; ``ic=True`` makes every dw + pw pair an IC layer."""

    def __init__(self, num_classes: int = 10, ic: bool = False, alpha: float = 1.0, alpha_mode: str = "fixed") -> None:
        super().__init__()
        num_classes = positive_int("num_classes", num_classes)
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True))
        blocks, in_channels = [], 32
        for entry in _CONFIG:
            out_channels, stride = entry if isinstance(entry, tuple) else (entry, 1)
            if ic:
                blocks.append(
                    IcDepthwiseSeparable(in_channels, out_channels, stride, alpha=alpha, alpha_mode=alpha_mode)
                )
            else:
                blocks.append(DepthwiseSeparable(in_channels, out_channels, stride))
            in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(x))).flatten(1))


def mobilenet_cifar(weights: Path | None = None, num_classes: int = 10) -> CifarMobileNet:
    """Plain MobileNet (v1) for CIFAR-10."""
    return build_plain(lambda: CifarMobileNet(num_classes), weights, num_classes)


def ic_mobilenet_cifar(
    weights: Path | None = None,
    num_classes: int = 10,
    *,
    alpha: float | None = None,
    alpha_mode: str | None = None,
) -> CifarMobileNet:
    """IC-MobileNet (v1) for CIFAR-10: every depthwise + pointwise pair is one IC layer."""
    path = resolve_weights(weights, None, num_classes)
    alpha, alpha_mode = resolve_alpha(weights, alpha, alpha_mode)
    return load_local(CifarMobileNet(num_classes, ic=True, alpha=alpha, alpha_mode=alpha_mode), path, plain_alpha=alpha)
