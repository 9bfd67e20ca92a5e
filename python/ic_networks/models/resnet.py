"""IC-ResNets (the paper's Table 1 models) built from torchvision's ResNets.

Which convs become IC layers:

* ``ic_resnet18/34/50/101/152``: every 3x3 conv inside the residual blocks (``layerN.M.conv*``).
  The 7x7 stem, the 1x1 convs and the downsample (projection shortcut) convs stay plain.
* ``ic_resnet50_b``: also the first 1x1 conv of every bottleneck (``conv1``).
* ``ic_resnet50_c``: every 1x1 conv of the bottleneck's residual branch (``conv1`` and ``conv3``);
  the downsample shortcut stays plain, as in the base rule.

The module tree and every plain state_dict key are torchvision's, so torchvision checkpoints load
(see :mod:`ic_networks.models._common` for ``weights`` and the default ``alpha``). Extra keyword
arguments go to the torchvision builder (e.g. ``zero_init_residual=True``).
"""

import os
from typing import Any

import torchvision.models as tvm
from torch import nn
from torchvision.models import (
    ResNet,
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
    ResNet152_Weights,
)

from ._common import build_torchvision_ic

__all__ = [
    "ic_resnet18",
    "ic_resnet34",
    "ic_resnet50",
    "ic_resnet101",
    "ic_resnet152",
    "ic_resnet50_b",
    "ic_resnet50_c",
]

Path = str | os.PathLike


def _in_blocks(name: str, module: nn.Module) -> bool:
    return name.startswith("layer") and ".downsample" not in name


def _conv1_or_3x3(name: str, module: nn.Module) -> bool:
    return _in_blocks(name, module) and (module.kernel_size == (3, 3) or name.endswith(".conv1"))


def _ic_resnet(
    builder, weights_enum, weights, num_classes, alpha, alpha_mode, kwargs, kernel_sizes=(3,), include=_in_blocks
):
    return build_torchvision_ic(
        builder, weights_enum, weights, num_classes, alpha, alpha_mode, kwargs, kernel_sizes, include
    )


def ic_resnet18(
    weights: ResNet18_Weights | Path | None = None,
    num_classes: int = 1000,
    *,
    alpha: float | None = None,
    alpha_mode: str | None = None,
    **kwargs: Any,
) -> ResNet:
    """IC-ResNet-18: torchvision's ResNet-18 with IC 3x3 convs in the residual blocks."""
    return _ic_resnet(tvm.resnet18, ResNet18_Weights, weights, num_classes, alpha, alpha_mode, kwargs)


def ic_resnet34(
    weights: ResNet34_Weights | Path | None = None,
    num_classes: int = 1000,
    *,
    alpha: float | None = None,
    alpha_mode: str | None = None,
    **kwargs: Any,
) -> ResNet:
    """IC-ResNet-34: torchvision's ResNet-34 with IC 3x3 convs in the residual blocks."""
    return _ic_resnet(tvm.resnet34, ResNet34_Weights, weights, num_classes, alpha, alpha_mode, kwargs)


def ic_resnet50(
    weights: ResNet50_Weights | Path | None = None,
    num_classes: int = 1000,
    *,
    alpha: float | None = None,
    alpha_mode: str | None = None,
    **kwargs: Any,
) -> ResNet:
    """IC-ResNet-50: torchvision's ResNet-50 with an IC 3x3 conv in every bottleneck."""
    return _ic_resnet(tvm.resnet50, ResNet50_Weights, weights, num_classes, alpha, alpha_mode, kwargs)


def ic_resnet101(
    weights: ResNet101_Weights | Path | None = None,
    num_classes: int = 1000,
    *,
    alpha: float | None = None,
    alpha_mode: str | None = None,
    **kwargs: Any,
) -> ResNet:
    """IC-ResNet-101: torchvision's ResNet-101 with an IC 3x3 conv in every bottleneck."""
    return _ic_resnet(tvm.resnet101, ResNet101_Weights, weights, num_classes, alpha, alpha_mode, kwargs)


def ic_resnet152(
    weights: ResNet152_Weights | Path | None = None,
    num_classes: int = 1000,
    *,
    alpha: float | None = None,
    alpha_mode: str | None = None,
    **kwargs: Any,
) -> ResNet:
    """IC-ResNet-152: torchvision's ResNet-152 with an IC 3x3 conv in every bottleneck."""
    return _ic_resnet(tvm.resnet152, ResNet152_Weights, weights, num_classes, alpha, alpha_mode, kwargs)


def ic_resnet50_b(
    weights: ResNet50_Weights | Path | None = None,
    num_classes: int = 1000,
    *,
    alpha: float | None = None,
    alpha_mode: str | None = None,
    **kwargs: Any,
) -> ResNet:
    """IC-ResNet-50-B: IC-ResNet-50 whose first 1x1 conv of every bottleneck is an IC layer too."""
    return _ic_resnet(
        tvm.resnet50,
        ResNet50_Weights,
        weights,
        num_classes,
        alpha,
        alpha_mode,
        kwargs,
        kernel_sizes=(1, 3),
        include=_conv1_or_3x3,
    )


def ic_resnet50_c(
    weights: ResNet50_Weights | Path | None = None,
    num_classes: int = 1000,
    *,
    alpha: float | None = None,
    alpha_mode: str | None = None,
    **kwargs: Any,
) -> ResNet:
    """IC-ResNet-50-C: every conv of every bottleneck's residual branch (1x1, 3x3, 1x1) is an IC layer."""
    return _ic_resnet(
        tvm.resnet50,
        ResNet50_Weights,
        weights,
        num_classes,
        alpha,
        alpha_mode,
        kwargs,
        kernel_sizes=(1, 3),
        include=_in_blocks,
    )
