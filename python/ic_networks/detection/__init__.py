"""Object detection with IC backbones.

* torchvision: :func:`fasterrcnn_ic_resnet50_fpn` and :func:`retinanet_ic_resnet50_fpn`; after
  :func:`ic_networks.integrations.torchvision.register` (never at import) they are also
  ``torchvision.models.get_model("fasterrcnn_ic_resnet50_fpn", ...)``;
* PASCAL VOC from a local VOCdevkit and its mAP: :mod:`ic_networks.detection.voc` (the mAP needs the
  ``[detection]`` extra: ``pip install "ic-networks[detection]"``);
* ``ic-networks train-det`` / ``eval-det``: :mod:`ic_networks.cli.detection`;
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
    "fasterrcnn_ic_resnet50_fpn",
    "retinanet_ic_resnet50_fpn",
    "ic_resnet50_fpn_backbone",
    "load_backbone_state",
    "count_ic_layers",
    "BUILDERS",
    "VOC_CLASSES",
    "VOCDataset",
    "voc_map",
]

#: The detector builders by name (the names ``register()`` gives them in torchvision).
BUILDERS = {
    "fasterrcnn_ic_resnet50_fpn": fasterrcnn_ic_resnet50_fpn,
    "retinanet_ic_resnet50_fpn": retinanet_ic_resnet50_fpn,
}
