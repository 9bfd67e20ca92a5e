"""torchvision integration: make ``torchvision.models.get_model("ic_resnet50")`` work.

>>> from ic_networks.integrations.torchvision import register
>>> register()
>>> import torchvision
>>> model = torchvision.models.get_model("ic_resnet50", num_classes=10)

Nothing is registered when ``ic_networks`` (or any of its modules) is imported: torchvision's
registry is global state, so adding to it is an explicit call. :func:`register` adds

* every IC classifier builder of :mod:`ic_networks.models` (the ``ic_*`` names), and
* the IC detectors of :mod:`ic_networks.detection` (``fasterrcnn_ic_resnet50_fpn``,
  ``retinanet_ic_resnet50_fpn``)

to torchvision's model registry (``torchvision.models._api.BUILTIN_MODELS``, the dict behind
``register_model``), so ``get_model``, ``get_model_builder``, ``list_models`` (also
``list_models(module=ic_networks.models)`` / ``module=ic_networks.detection``) and, for the
torchvision-based classifiers, ``get_model_weights`` know them. Plain CIFAR builders are not
registered. Registering is idempotent; a *different* model already registered under one of the
names is an error, and then nothing is registered.
"""

from collections.abc import Callable

from torchvision.models import _api

from .. import models

__all__ = ["register", "ic_builder_names", "builders"]


def ic_builder_names() -> list[str]:
    """The classifier names :func:`register` adds: every ``ic_*`` builder of ``ic_networks.models``."""
    return sorted(n for n in models.__all__ if n.startswith("ic_") and callable(getattr(models, n)))


def builders() -> dict[str, Callable]:
    """Every builder :func:`register` adds, by name (classifiers and detectors)."""
    from ..detection import BUILDERS

    out = {name: getattr(models, name) for name in ic_builder_names()}
    out.update(BUILDERS)
    return out


def register() -> list[str]:
    """Registers every IC builder (classifiers and detectors) with torchvision; returns the names."""
    todo = builders()
    for name, fn in todo.items():
        present = _api.BUILTIN_MODELS.get(name)
        if present is not None and present is not fn:
            raise RuntimeError(
                f"register: torchvision already has a different model registered as {name!r} "
                f"({present.__module__}.{present.__qualname__})"
            )
    _api.BUILTIN_MODELS.update(todo)
    return sorted(todo)
