"""torchvision integration: make ``torchvision.models.get_model("ic_resnet50")`` work.

>>> from ic_networks.integrations.torchvision import register
>>> register()
>>> import torchvision
>>> model = torchvision.models.get_model("ic_resnet50", num_classes=10)

:func:`register` adds every IC builder of :mod:`ic_networks.models` (the ``ic_*`` names) to
torchvision's model registry (``torchvision.models._api.BUILTIN_MODELS``, the dict behind
``register_model``), so ``get_model``, ``get_model_builder``, ``list_models`` (also
``list_models(module=ic_networks.models)``) and, for the torchvision-based builders,
``get_model_weights`` know them. Plain CIFAR builders are not registered. Registering is
idempotent; a *different* model already registered under one of the names is an error.
"""
from typing import List

from torchvision.models import _api

from .. import models

__all__ = ["register", "ic_builder_names"]


def ic_builder_names() -> List[str]:
    """The names :func:`register` adds: every ``ic_*`` builder exported by ``ic_networks.models``."""
    return sorted(n for n in models.__all__ if n.startswith("ic_") and callable(getattr(models, n)))


def register() -> List[str]:
    """Registers every IC builder with torchvision; returns the registered names."""
    names = ic_builder_names()
    for name in names:
        fn = getattr(models, name)
        present = _api.BUILTIN_MODELS.get(name)
        if present is not None and present is not fn:
            raise RuntimeError(
                f"register: torchvision already has a different model registered as {name!r} "
                f"({present.__module__}.{present.__qualname__})"
            )
    for name in names:
        _api.BUILTIN_MODELS[name] = getattr(models, name)
    return names
