"""Training: recipes, schedules, datasets read from local paths, the engine, and the demo.

>>> from ic_networks.training import get_recipe, train
>>> summary = train(get_recipe("scratch-fmnist", epochs=1), out_dir="runs/try")  # doctest: +SKIP
"""
from .data import DataBundle, build_datasets, load_cifar10, load_fashion_mnist, read_idx
from .engine import Trainer, build_model, evaluate, load_weights, make_student, models_for_recipe, train
from .recipes import RECIPES, Recipe, get_recipe
from .schedules import AlphaRamp, LambdaSchedule, LrFactor

__all__ = [
    "AlphaRamp", "DataBundle", "LambdaSchedule", "LrFactor", "RECIPES", "Recipe", "Trainer", "build_datasets",
    "build_model", "evaluate", "get_recipe", "load_cifar10", "load_fashion_mnist", "load_weights", "make_student",
    "models_for_recipe", "read_idx", "train",
]
