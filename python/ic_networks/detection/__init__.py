"""Object detection with IC backbones (SPEC §5).

* torchvision: :func:`fasterrcnn_ic_resnet50_fpn` and :func:`retinanet_ic_resnet50_fpn`, also
  available as ``torchvision.models.get_model("fasterrcnn_ic_resnet50_fpn", ...)`` once this
  package is imported (:func:`register`, idempotent, runs at import);
* PASCAL VOC from a local VOCdevkit and its mAP: :mod:`ic_networks.detection.voc`;
* ``ic-networks train-det`` / ``eval-det``: :mod:`ic_networks.detection.cli`;
* mmdetection: ``ic_networks.integrations.mmdet`` (an ``ICResNet`` backbone), ``configs/mmdet/``.
"""
from .builders import (  # noqa: F401
    count_ic_layers,
    fasterrcnn_ic_resnet50_fpn,
    ic_resnet50_fpn_backbone,
    load_backbone_state,
    retinanet_ic_resnet50_fpn,
)
from .voc import VOC_CLASSES, VOCDataset, voc_map  # noqa: F401

__all__ = [
    "fasterrcnn_ic_resnet50_fpn", "retinanet_ic_resnet50_fpn", "ic_resnet50_fpn_backbone", "load_backbone_state",
    "count_ic_layers", "register", "BUILDERS", "VOC_CLASSES", "VOCDataset", "voc_map",
]

BUILDERS = {
    "fasterrcnn_ic_resnet50_fpn": fasterrcnn_ic_resnet50_fpn,
    "retinanet_ic_resnet50_fpn": retinanet_ic_resnet50_fpn,
}


def register() -> None:
    """Adds the builders to torchvision's model registry (``torchvision.models.get_model``,
    ``list_models``). Calling it again is a no-op; a name already taken by another builder is left
    alone."""
    from torchvision.models._api import BUILTIN_MODELS, register_model

    for name, fn in BUILDERS.items():
        if name not in BUILTIN_MODELS:
            register_model(name)(fn)


register()
