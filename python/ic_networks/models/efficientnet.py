"""IC-EfficientNet-B0/B1/B2 (paper Table 2) built from torchvision's EfficientNets.

**Decision** (the paper leaves it open): the IC layers are the depthwise k x k convs of the MBConv
blocks (3x3 and 5x5, ``groups == channels``). They are the only spatial convs inside the blocks,
which mirrors the ResNet rule (the blocks' spatial convs become IC, the stem stays). The 3x3 stem,
the 1x1 expand / project convs, the squeeze-excitation 1x1 convs and the 1x1 head conv stay plain.
For a depthwise conv W' follows ``groups`` (as in every IC layer, docs/design.md), so each channel
gets one scalar w' and one b1: the IC branch costs C + C parameters per layer, and the box sum is per channel as always.

The module tree and every plain state_dict key are torchvision's (see
:mod:`ic_networks.models._common` for ``weights`` and the default ``alpha``).
"""

import os
from typing import Any

import torchvision.models as tvm
from torch import nn
from torchvision.models import EfficientNet, EfficientNet_B0_Weights, EfficientNet_B1_Weights, EfficientNet_B2_Weights

from ._common import build_torchvision_ic

__all__ = ["ic_efficientnet_b0", "ic_efficientnet_b1", "ic_efficientnet_b2"]

Path = str | os.PathLike


def _depthwise_in_blocks(name: str, module: nn.Module) -> bool:
    # features.0 is the stem; the MBConv stages are features.1 .. features.7.
    return (
        name.startswith("features.")
        and not name.startswith("features.0.")
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _ic_efficientnet(builder, weights_enum, weights, num_classes, alpha, alpha_mode, kwargs):
    return build_torchvision_ic(
        builder, weights_enum, weights, num_classes, alpha, alpha_mode, kwargs, (3, 5), _depthwise_in_blocks
    )


def ic_efficientnet_b0(
    weights: EfficientNet_B0_Weights | Path | None = None,
    num_classes: int = 1000,
    *,
    alpha: float | None = None,
    alpha_mode: str | None = None,
    **kwargs: Any,
) -> EfficientNet:
    """IC-EfficientNet-B0: torchvision's EfficientNet-B0 with IC depthwise convs in the MBConv blocks."""
    return _ic_efficientnet(
        tvm.efficientnet_b0, EfficientNet_B0_Weights, weights, num_classes, alpha, alpha_mode, kwargs
    )


def ic_efficientnet_b1(
    weights: EfficientNet_B1_Weights | Path | None = None,
    num_classes: int = 1000,
    *,
    alpha: float | None = None,
    alpha_mode: str | None = None,
    **kwargs: Any,
) -> EfficientNet:
    """IC-EfficientNet-B1: torchvision's EfficientNet-B1 with IC depthwise convs in the MBConv blocks."""
    return _ic_efficientnet(
        tvm.efficientnet_b1, EfficientNet_B1_Weights, weights, num_classes, alpha, alpha_mode, kwargs
    )


def ic_efficientnet_b2(
    weights: EfficientNet_B2_Weights | Path | None = None,
    num_classes: int = 1000,
    *,
    alpha: float | None = None,
    alpha_mode: str | None = None,
    **kwargs: Any,
) -> EfficientNet:
    """IC-EfficientNet-B2: torchvision's EfficientNet-B2 with IC depthwise convs in the MBConv blocks."""
    return _ic_efficientnet(
        tvm.efficientnet_b2, EfficientNet_B2_Weights, weights, num_classes, alpha, alpha_mode, kwargs
    )
