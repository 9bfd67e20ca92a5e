"""Models for the training engine: a model by name, the WLD student, and the pair a recipe needs."""

from __future__ import annotations

from torch import nn

from ..io import load_weights
from .recipes import Recipe

__all__ = ["build_model", "make_student", "models_for_recipe"]


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """A model by name, randomly initialised: ``fmnist_cnn``/``ic_fmnist_cnn``, any builder of
    ``ic_networks.models``, or a torchvision classification model (``resnet50``, ...)."""
    from ..models import cnn

    if name in cnn.__all__ and name.islower():
        return getattr(cnn, name)(num_classes=num_classes, in_channels=in_channels)
    try:
        from .. import models as zoo

        fn = getattr(zoo, name, None)
    except ImportError:
        fn = None
    if callable(fn) and not isinstance(fn, type) and not name.startswith("_"):
        return fn(num_classes=num_classes)
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models):
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    raise ValueError(
        f"model: unknown model {name!r}; use fmnist_cnn, ic_fmnist_cnn, a builder of ic_networks.models "
        f"or a torchvision classification model name"
    )


def make_student(teacher: nn.Module, recipe: Recipe) -> nn.Module:
    """The WLD student: ``ic_networks.convert(teacher)`` with alpha = ``alpha_start``
    (learnable when ``recipe.alpha == 'learn'``, else a buffer), a deep copy."""
    from ..conversion import convert

    mode = "learnable" if recipe.alpha == "learn" else "fixed"
    return convert(teacher, alpha=recipe.alpha_start, alpha_mode=mode)


def models_for_recipe(recipe: Recipe, num_classes: int, in_channels: int, teacher_weights=None):
    """``(model, teacher)``: for ``scratch`` the randomly initialised ``recipe.model`` and None; for
    ``wld`` the student converted from the teacher ``recipe.model`` (weights from
    ``teacher_weights``, required to train; loaded with :func:`ic_networks.io.load_weights`) and the
    teacher itself."""
    if recipe.mode == "scratch":
        return build_model(recipe.model, num_classes, in_channels), None
    teacher = build_model(recipe.model, num_classes, in_channels)
    if teacher_weights is not None:
        load_weights(teacher, teacher_weights, what="teacher")
    return make_student(teacher, recipe), teacher
