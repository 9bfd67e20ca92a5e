"""torchvision detectors with an IC-ResNet-50-FPN backbone.

The backbone is torchvision's ResNet-50 with every 3x3 block conv turned into an
:class:`~ic_networks.IcConv2d` by :func:`ic_networks.convert` (the zoo's IC-ResNet-50), wrapped
in torchvision's ``BackboneWithFPN`` exactly as ``fasterrcnn_resnet50_fpn`` /
``retinanet_resnet50_fpn`` (v1) wrap the plain one. Decisions, as in torchvision:

* with ``weights_backbone`` the BatchNorms are ``FrozenBatchNorm2d`` and the first
  ``5 - trainable_backbone_layers`` stages are frozen (default 3 trainable, IC parameters of frozen
  stages included); without it the backbone trains from scratch with ``nn.BatchNorm2d`` and every
  stage trainable (``trainable_backbone_layers`` must then be ``None`` or 5);
* ``ic_alpha=None`` / ``ic_alpha_mode=None`` mean a learnable alpha = 0 when ``weights_backbone`` is
  given (eq. 7: the converted backbone starts as the plain one; an IC checkpoint's own ``alpha``
  values then overwrite it) and a fixed alpha = 1 from scratch (eq. 6), as in
  :mod:`ic_networks.models`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from ..conversion import convert
from ..io import read_state_dict
from ..nn import IC_PARAM_NAMES, ic_layers, is_ic_layer, quiet_plain_loads

__all__ = [
    "fasterrcnn_ic_resnet50_fpn",
    "retinanet_ic_resnet50_fpn",
    "ic_resnet50_fpn_backbone",
    "load_backbone_state",
    "count_ic_layers",
]

WeightsBackbone = None | str | os.PathLike | Mapping[str, torch.Tensor]


def load_backbone_state(body: nn.Module, weights_backbone: str | os.PathLike | Mapping[str, Any]) -> None:
    """Loads a plain or IC ResNet-50 state_dict (a path, a mapping, or a training checkpoint; see
    :func:`ic_networks.io.read_state_dict`) into the IC ResNet-50 ``body``.

    ``fc.*`` is ignored (the detector drops the classifier, so any ``num_classes`` works). The only
    keys allowed to be missing are the IC ones (``adjust_weight``, ``adjust_bias``, ``alpha``: a plain
    checkpoint), which keep their initialisation; any other missing or unexpected key (BatchNorm's
    ``num_batches_tracked`` aside, which ``FrozenBatchNorm2d`` drops) or a wrong shape is an error.
    """
    if isinstance(weights_backbone, (str, os.PathLike)) and not os.path.isfile(weights_backbone):
        raise FileNotFoundError(
            f"weights_backbone: no such file {os.fspath(weights_backbone)!r} (expected a local ResNet-50 state_dict)"
        )
    if not isinstance(weights_backbone, (str, os.PathLike, Mapping)):
        raise TypeError(
            "weights_backbone: expected None, a path to a local state_dict or a state_dict mapping, "
            f"got {type(weights_backbone).__name__}"
        )
    state = read_state_dict(weights_backbone, "weights_backbone")  # checkpoint wrappers and prefixes unwrapped
    sd = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = body.state_dict()
    wrong = [k for k, v in sd.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    missing = [k for k in own if k not in sd and not k.startswith("fc.") and k.rsplit(".", 1)[-1] not in IC_PARAM_NAMES]
    unexpected = [k for k in sd if k not in own and not k.endswith("num_batches_tracked")]  # FrozenBatchNorm2d
    if wrong or missing or unexpected:
        raise RuntimeError(
            "weights_backbone: not a ResNet-50 state_dict; "
            + "; ".join(
                f"{what} {keys[:4]}{'...' if len(keys) > 4 else ''}"
                for what, keys in (("wrong shapes", wrong), ("missing keys", missing), ("unexpected keys", unexpected))
                if keys
            )
        )
    alphas = {name: float(m.alpha.detach()) for name, m in body.named_modules() if is_ic_layer(m)}
    with quiet_plain_loads():  # a plain backbone is expected here: its IC layers keep the builder's ic_alpha
        body.load_state_dict({**sd, **{k: v for k, v in own.items() if k.startswith("fc.")}}, strict=False)
    for name, m in body.named_modules():
        if name in alphas and f"{name}.alpha" not in sd:
            m.set_alpha(alphas[name])


def ic_resnet50_fpn_backbone(
    weights_backbone: WeightsBackbone = None,
    trainable_layers: int | None = None,
    returned_layers: list | None = None,
    extra_blocks: nn.Module | None = None,
    ic_alpha: float | None = None,
    ic_alpha_mode: str | None = None,
) -> BackboneWithFPN:
    """IC-ResNet-50 + FPN (256 channels), see the module docstring for the conventions."""
    pretrained = weights_backbone is not None
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else 5
    if isinstance(trainable_layers, bool) or not isinstance(trainable_layers, int) or not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_backbone_layers: expected an int in [0, 5], got {trainable_layers!r}")
    if not pretrained and trainable_layers != 5:
        raise ValueError(
            "trainable_backbone_layers: freezing stages of a randomly initialised backbone makes no sense; "
            f"pass weights_backbone or leave it None/5 (got {trainable_layers})"
        )
    if ic_alpha is None:
        ic_alpha = 0.0 if pretrained else 1.0
    if ic_alpha_mode is None:
        ic_alpha_mode = "learnable" if pretrained else "fixed"
    norm_layer: Callable[..., nn.Module] = misc_nn_ops.FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    body = convert(
        resnet50(weights=None, norm_layer=norm_layer),
        kernel_sizes=(3,),
        alpha=ic_alpha,
        alpha_mode=ic_alpha_mode,
        inplace=True,
    )
    if pretrained:
        load_backbone_state(body, weights_backbone)
    return _resnet_fpn_extractor(body, trainable_layers, returned_layers=returned_layers, extra_blocks=extra_blocks)


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes: expected an int >= 2 (background included), got {num_classes!r}")
    return num_classes


def fasterrcnn_ic_resnet50_fpn(
    num_classes: int = 91,
    weights_backbone: WeightsBackbone = None,
    trainable_backbone_layers: int | None = None,
    *,
    ic_alpha: float | None = None,
    ic_alpha_mode: str | None = None,
    **kwargs: Any,
) -> FasterRCNN:
    """Faster R-CNN with an IC-ResNet-50-FPN backbone (torchvision's ``fasterrcnn_resnet50_fpn``, v1).

    Args:
        num_classes: number of classes including the background (label 0); 21 for PASCAL VOC.
        weights_backbone: ``None`` (from scratch) or a local state_dict (path or mapping) of a plain
            or IC ResNet-50; a plain one leaves the IC parameters at their initialisation.
        trainable_backbone_layers: 0..5 stages to train, counted from ``layer4``; ``None`` means 3
            with ``weights_backbone`` and all 5 without.
        ic_alpha, ic_alpha_mode: alpha of every IC layer and ``'learnable'`` or ``'fixed'``
            (``None``: learnable 0 with ``weights_backbone``, fixed 1 without).
        **kwargs: passed to :class:`torchvision.models.detection.FasterRCNN` (e.g. ``min_size``).
    """
    backbone = ic_resnet50_fpn_backbone(
        weights_backbone, trainable_backbone_layers, ic_alpha=ic_alpha, ic_alpha_mode=ic_alpha_mode
    )
    return FasterRCNN(backbone, num_classes=_check_num_classes(num_classes), **kwargs)


def retinanet_ic_resnet50_fpn(
    num_classes: int = 91,
    weights_backbone: WeightsBackbone = None,
    trainable_backbone_layers: int | None = None,
    *,
    ic_alpha: float | None = None,
    ic_alpha_mode: str | None = None,
    **kwargs: Any,
) -> RetinaNet:
    """RetinaNet with an IC-ResNet-50-FPN backbone (torchvision's ``retinanet_resnet50_fpn``, v1: FPN
    on C3-C5 plus P6/P7 from P5). Arguments as in :func:`fasterrcnn_ic_resnet50_fpn`. Labels are
    kept 1..``num_classes - 1`` as for Faster R-CNN (torchvision's COCO convention, 21 for PASCAL VOC),
    so the same datasets serve both; label 0 is then a class no anchor is positive for, whose scores
    training drives to 0."""
    backbone = ic_resnet50_fpn_backbone(
        weights_backbone,
        trainable_backbone_layers,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
        ic_alpha=ic_alpha,
        ic_alpha_mode=ic_alpha_mode,
    )
    return RetinaNet(backbone, num_classes=_check_num_classes(num_classes), **kwargs)


def count_ic_layers(model: nn.Module) -> int:
    """Number of IC layers in ``model`` (:func:`ic_networks.ic_layers`)."""
    return len(ic_layers(model))
