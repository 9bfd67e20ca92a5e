"""What counts as an IC layer: the one predicate every part of ic-networks uses.

An *IC layer* is a module that computes ``Y + alpha * relu(Y - conv1x1(boxsum(X), W') + b1)`` for
its own ``Y``: :class:`~ic_networks.IcConv2d` (``Y`` is one convolution) and
:class:`~ic_networks.models.mobilenet.IcDepthwiseSeparable` (``Y`` is MobileNet's depthwise +
pointwise pair). They share an interface, and :func:`is_ic_layer` tests for it rather than for a
class, so a new IC layer type is seen everywhere (:func:`ic_networks.profile`, the alpha ramp and
alpha logging of the trainer, :func:`ic_networks.convert`, the checkpoint loaders) once it has:

* ``adjust_weight`` (an ``nn.Parameter``, W' of shape ``(Cout, Cin, 1, 1)``) and ``adjust_bias``
  (b1, an ``nn.Parameter``);
* ``alpha``: a 0-d tensor, a parameter (``alpha_mode="learnable"``) or a buffer (``"fixed"``);
* ``set_alpha(value)``, which sets alpha in place;
* the box sum's geometry: ``kernel_size``, ``stride``, ``padding``, ``dilation``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["IC_PARAM_NAMES", "is_ic_layer", "ic_layers", "ic_keys"]

#: The state_dict entries an IC layer adds to the plain layer's.
IC_PARAM_NAMES = ("adjust_weight", "adjust_bias", "alpha")


def is_ic_layer(module: nn.Module) -> bool:
    """True if ``module`` itself is an IC layer (see the module docstring); a model that merely
    contains IC layers is not one."""
    return (
        isinstance(getattr(module, "adjust_weight", None), nn.Parameter)
        and isinstance(getattr(module, "adjust_bias", None), nn.Parameter)
        and isinstance(getattr(module, "alpha", None), torch.Tensor)
        and callable(getattr(module, "set_alpha", None))
        and hasattr(module, "kernel_size")
    )


def ic_layers(model: nn.Module) -> list[nn.Module]:
    """Every IC layer in ``model`` (``model`` itself included), in ``modules()`` order. A wrapper
    such as ``DistributedDataParallel`` is walked through like any module."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    return [m for m in model.modules() if is_ic_layer(m)]


def ic_keys(model: nn.Module) -> set[str]:
    """The state_dict keys that the IC layers of ``model`` add (``<name>.adjust_weight``, ...)."""
    keys = set()
    for name, module in model.named_modules():
        if is_ic_layer(module):
            prefix = f"{name}." if name else ""
            keys.update(prefix + k for k in IC_PARAM_NAMES)
    return keys
