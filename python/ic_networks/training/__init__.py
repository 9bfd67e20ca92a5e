"""Training: recipes, schedules, datasets read from local paths, and the trainer.

>>> from ic_networks.training import get_recipe, train
>>> summary = train(get_recipe("scratch-fmnist", epochs=1), out_dir="runs/try")  # doctest: +SKIP

Modules: :mod:`.recipes` (named recipes), :mod:`.schedules` (lambda, alpha, lr), :mod:`.data`
(datasets), :mod:`.model_factory` (models by name, the WLD student), :mod:`.distributed` (DDP
helpers), :mod:`.evaluate`, :mod:`.trainer` (the :class:`Trainer`), :mod:`.train_recipe`
(:func:`train`), :mod:`.checkpoint` (RNG state), :mod:`.metrics` (CSV/JSON/curves). The demo and
the study are in :mod:`ic_networks.experiments`.
"""

from ..io import load_weights
from .data import DataBundle, build_datasets, load_cifar10, load_fashion_mnist, read_idx
from .distributed import init_distributed, shutdown_distributed
from .evaluate import evaluate
from .model_factory import build_model, make_student, models_for_recipe
from .recipes import RECIPES, Recipe, get_recipe
from .schedules import AlphaRamp, LambdaSchedule, LrFactor
from .train_recipe import train
from .trainer import Trainer

__all__ = [
    "AlphaRamp",
    "DataBundle",
    "LambdaSchedule",
    "LrFactor",
    "RECIPES",
    "Recipe",
    "Trainer",
    "build_datasets",
    "build_model",
    "evaluate",
    "get_recipe",
    "load_cifar10",
    "load_fashion_mnist",
    "load_weights",
    "make_student",
    "models_for_recipe",
    "read_idx",
    "train",
    "init_distributed",
    "shutdown_distributed",
]
