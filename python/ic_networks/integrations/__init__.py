"""Integrations with other libraries: ``torchvision`` (model registry) and ``mmdet`` (backbone;
import ``ic_networks.integrations.mmdet`` explicitly, it needs mmdetection)."""
from . import torchvision  # noqa: F401
