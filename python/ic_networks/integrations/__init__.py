"""Integrations with other libraries: ``torchvision`` (model registry), ``timm`` (model registry; import
``ic_networks.integrations.timm`` explicitly, it needs the ``[timm]`` extra) and ``mmdet`` (backbone and
mmengine checkpoint loading; import ``ic_networks.integrations.mmdet`` explicitly, it needs mmdetection)."""

from . import torchvision  # noqa: F401
