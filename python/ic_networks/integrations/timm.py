"""timm integration: make ``timm.create_model("ic_resnet50", num_classes=10)`` work.

>>> from ic_networks.integrations.timm import register
>>> register()
>>> import timm
>>> model = timm.create_model("ic_resnet50", num_classes=10)

Nothing is registered when ``ic_networks`` (or this module) is imported: timm's registry is global
state, so adding to it is an explicit call. :func:`register` adds every IC classifier builder of
:mod:`ic_networks.models` (the ``ic_*`` names, as :mod:`ic_networks.integrations.torchvision` does) to
timm's model registry through ``timm.models.register_model``, so ``timm.create_model``,
``timm.list_models("ic_*")`` and ``timm.is_model`` know them. This module holds one timm entry point
per name (``ic_networks.integrations.timm.ic_resnet50``, ...), which is what gets registered.
Registering is idempotent; a *different* model already registered under one of the names is an
error, and then nothing is registered.

An entry point takes timm's arguments and passes the others (``num_classes``, ``weights``,
``alpha``, ``alpha_mode``, the torchvision builder's keyword arguments) to the ic_networks builder:

* ``pretrained=True`` is an error: timm has no weights for these names and nothing is downloaded;
  pass ``weights=PATH``, a local state_dict of the plain or IC model, as the builders take it.
  (``checkpoint_path=`` of ``create_model`` loads a full IC state_dict after building, as in timm.)
* ``in_chans`` must be the model's input channels (3; 1 for the Fashion-MNIST models).
* ``device`` and ``dtype`` move the built model.
* ``pretrained_cfg``, ``pretrained_cfg_overlay`` and ``cache_dir`` describe pretrained weights and
  are ignored. The model gets a ``pretrained_cfg`` with its architecture name and input size, which
  ``timm.data.resolve_model_data_config`` reads.

Converting timm's own models is :func:`ic_networks.convert`'s job (ResNet, SE-ResNet, ResNeXt, VGG,
MobileNet-V2/V3 and others built from ``nn.Conv2d``); timm's ``Conv2dSame`` (the ``tf_*`` models) is
left as it is with a warning, and ``CondConv2d``/``MixedConv2d`` wrappers are not ``nn.Conv2d``
(``MixedConv2d``'s inner convs are). Needs the ``[timm]`` extra.
"""

from collections.abc import Callable
from typing import Any

from .._optional import require

require("timm", "ic_networks.integrations.timm")

from timm.models import is_model, model_entrypoint, register_model  # noqa: E402

from .. import models  # noqa: E402
from ..models._zoo import ZOO  # noqa: E402
from .torchvision import ic_builder_names  # noqa: E402

__all__ = ["register", "entrypoints"]


def _entrypoint(name: str) -> Callable[..., Any]:
    builder = getattr(models, name)
    input_size = tuple(ZOO[name].input_size[1:]) if name in ZOO else (3, 224, 224)

    def entrypoint(
        pretrained: bool = False,
        pretrained_cfg: Any = None,
        pretrained_cfg_overlay: Any = None,
        cache_dir: Any = None,
        in_chans: int | None = None,
        device: Any = None,
        dtype: Any = None,
        **kwargs: Any,
    ):
        if pretrained:
            raise ValueError(
                f"{name}: timm has no pretrained weights for the IC zoo and ic-networks downloads nothing; "
                f"pass weights=PATH (a local state_dict of the plain or IC model) instead of pretrained=True"
            )
        if in_chans is not None and in_chans != input_size[0]:
            raise ValueError(f"{name}: in_chans must be {input_size[0]} (the model's input channels), got {in_chans}")
        model = builder(**kwargs)
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        model.pretrained_cfg = {"architecture": name, "input_size": input_size}
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"timm entry point of :func:`ic_networks.models.{name}` (see this module's docstring)."
    return entrypoint


_ENTRYPOINTS: dict[str, Callable[..., Any]] = {name: _entrypoint(name) for name in ic_builder_names()}
globals().update(_ENTRYPOINTS)
__all__ += sorted(_ENTRYPOINTS)  # timm's register_model lists an entry point in its module's __all__


def entrypoints() -> dict[str, Callable[..., Any]]:
    """The timm entry points :func:`register` adds, by name."""
    return dict(_ENTRYPOINTS)


def register() -> list[str]:
    """Registers every IC classifier builder with timm; returns the names."""
    for name, fn in _ENTRYPOINTS.items():
        if is_model(name) and model_entrypoint(name) is not fn:
            present = model_entrypoint(name)
            raise RuntimeError(
                f"register: timm already has a different model registered as {name!r} "
                f"({present.__module__}.{present.__qualname__})"
            )
    for name, fn in _ENTRYPOINTS.items():
        if not is_model(name):
            register_model(fn)
    return sorted(_ENTRYPOINTS)
