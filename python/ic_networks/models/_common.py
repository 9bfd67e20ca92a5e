"""What every builder of the zoo shares: where weights come from, how they load, and the default alpha.

``weights`` (every builder):

* ``None``: random initialisation.
* a local path (``str`` or ``os.PathLike``) to a ``torch.save``-d state_dict, either of the plain
  model or of the IC model itself (also accepted: a training checkpoint holding it under
  ``"model"`` or ``"state_dict"``);
* a torchvision ``WeightsEnum`` member (or its name, e.g. ``"IMAGENET1K_V1"`` / ``"DEFAULT"``; a
  string is a path when such a file exists) for the builders that wrap a torchvision model. The
  file is read from the local torch hub cache,
  ``torch.hub.get_dir()/checkpoints/<file name of the enum's url>``, and **never downloaded**: a
  missing file is a ``FileNotFoundError`` that names the file to put there.

``weights`` and ``num_classes`` are checked before the model is built, so a wrong path fails fast.

Loading is :func:`ic_networks.io.load_weights`: strict except for the IC keys. In a plain
state_dict every IC layer's IC keys (``adjust_weight``, ``adjust_bias``, ``alpha``) are missing:
W' and b1 keep their initialisation (random W', b1 = 0) and alpha is 0, so the model computes the
plain one bit for bit (an explicit ``alpha=`` is used instead); an IC state_dict must leave nothing
missing. Any other missing or unexpected key, or a shape mismatch, is a ``RuntimeError``. Checkpoint
wrappers (``"model"``/``"state_dict"`` entries, ``module.``/``_orig_mod.`` prefixes) are unwrapped.

Default alpha: an IC model trained from scratch (``weights=None``) gets the paper's eq. 6 layer,
``alpha=1`` as a fixed buffer; an IC model built on weights gets the eq. 7 layer, ``alpha=0`` as a
learnable parameter, so it starts exactly as the plain model (the WLD recipe). An IC checkpoint's
own ``alpha`` values overwrite this. ``alpha=`` / ``alpha_mode=`` override both.
"""

import os
import urllib.parse
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torchvision.models import WeightsEnum

from .._checks import positive_int
from ..conversion import convert
from ..io import load_weights
from ..nn import ALPHA_MODES

__all__ = [
    "hub_checkpoint_path",
    "resolve_weights",
    "load_local",
    "resolve_alpha",
    "build_plain",
    "build_ic",
    "build_torchvision_ic",
]


def hub_checkpoint_path(weights: WeightsEnum) -> str:
    """Where torchvision would cache ``weights``: ``<torch hub dir>/checkpoints/<file name>``."""
    filename = os.path.basename(urllib.parse.urlparse(weights.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def resolve_weights(
    weights, weights_enum: type[WeightsEnum] | None = None, num_classes: int | None = None
) -> str | None:
    """The local file that ``weights`` names (``None`` for ``None``), checked before any model is built.

    ``num_classes``, when given, must agree with a torchvision enum's number of categories.
    """
    if num_classes is not None:
        positive_int("num_classes", num_classes)
    if weights is None:
        return None
    if isinstance(weights, WeightsEnum):
        if weights_enum is None:
            raise TypeError(f"weights: this model has no torchvision weights; got {weights}, pass a local path instead")
        member = weights_enum.verify(weights)  # TypeError for another model's enum
    elif isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if os.path.isfile(path):
            return path
        name = path.replace(weights_enum.__name__ + ".", "") if weights_enum is not None else None
        if weights_enum is None or name not in weights_enum.__members__:
            raise FileNotFoundError(f"weights: no such file {path!r}")
        member = weights_enum[name]
    else:
        raise TypeError(
            f"weights: expected None, a local path or a torchvision WeightsEnum, got {type(weights).__name__}"
        )
    classes = len(member.meta["categories"])
    if num_classes is not None and num_classes != classes:
        raise ValueError(f"num_classes: {member} has {classes} classes, got {num_classes}")
    path = hub_checkpoint_path(member)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"weights: {member} needs the file {os.path.basename(path)!r} in {os.path.dirname(path)!r}; "
            f"ic-networks never downloads: fetch {member.url} there yourself"
        )
    return path


def load_local(model: nn.Module, path: str | None, plain_alpha: float = 0.0) -> nn.Module:
    """Loads the state_dict file ``path`` (from :func:`resolve_weights`; ``None``: nothing) into
    ``model`` with :func:`ic_networks.io.load_weights` (IC layers without IC parameters in the file
    get alpha = ``plain_alpha``); returns ``model``."""
    return model if path is None else load_weights(model, path, plain_alpha=plain_alpha)


def resolve_alpha(weights, alpha: float | None, alpha_mode: str | None) -> tuple[float, str]:
    """Default alpha: ``(1.0, 'fixed')`` from scratch, ``(0.0, 'learnable')`` on weights."""
    scratch = weights is None
    alpha = (1.0 if scratch else 0.0) if alpha is None else alpha
    alpha_mode = ("fixed" if scratch else "learnable") if alpha_mode is None else alpha_mode
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha: expected a float, got {type(alpha).__name__}")
    if alpha_mode not in ALPHA_MODES:
        raise ValueError(f"alpha_mode: expected one of {ALPHA_MODES}, got {alpha_mode!r}")
    return float(alpha), alpha_mode


def build_plain(make: Callable[[], nn.Module], weights, num_classes: int) -> nn.Module:
    """A plain model of the zoo (no torchvision enum) with its ``weights`` loaded."""
    path = resolve_weights(weights, None, num_classes)
    return load_local(make(), path)


def build_ic(
    make_plain: Callable[[], nn.Module],
    weights,
    weights_enum: type[WeightsEnum] | None,
    num_classes: int,
    alpha: float | None,
    alpha_mode: str | None,
    kernel_sizes: Iterable = (3,),
    include: Callable[[str, nn.Module], bool] | None = None,
) -> nn.Module:
    """Checks the arguments, builds the plain model, converts it in place (:func:`ic_networks.convert`)
    and loads ``weights``."""
    path = resolve_weights(weights, weights_enum, num_classes)
    alpha, alpha_mode = resolve_alpha(weights, alpha, alpha_mode)
    model = convert(make_plain(), kernel_sizes, include, alpha=alpha, alpha_mode=alpha_mode, inplace=True)
    return load_local(model, path, plain_alpha=alpha)


def build_torchvision_ic(
    builder: Callable[..., nn.Module],
    weights_enum: type[WeightsEnum],
    weights,
    num_classes: int,
    alpha: float | None,
    alpha_mode: str | None,
    kwargs: dict,
    kernel_sizes: Iterable,
    include: Callable[[str, nn.Module], bool],
) -> nn.Module:
    """An IC model from a torchvision builder: plain model without weights, converted, then loaded.
    ``pretrained=`` (torchvision's old argument, which downloads) is a ``TypeError`` that says what to pass."""
    if "pretrained" in kwargs:
        folder, filename = os.path.split(hub_checkpoint_path(weights_enum.DEFAULT))
        raise TypeError(
            f"pretrained: not an argument of ic-networks' builders (ic-networks never downloads); pass "
            f"weights=PATH, a local state_dict file (e.g. torchvision's {filename!r}), or "
            f"weights={weights_enum.__name__}.DEFAULT with that file in {folder!r}"
        )
    return build_ic(
        lambda: builder(weights=None, num_classes=num_classes, **kwargs),
        weights,
        weights_enum,
        num_classes,
        alpha,
        alpha_mode,
        kernel_sizes,
        include,
    )
