"""``train()``: the entry point of ``ic-networks train`` (also usable from Python).

It joins the process group under ``torchrun`` (:mod:`.distributed`), builds the datasets
(:mod:`.data`) and the models (:mod:`.model_factory`) of a recipe and runs the :class:`~.trainer.Trainer`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .data import build_datasets
from .distributed import init_distributed, shutdown_distributed  # noqa: F401 -- joined here, left by the caller
from .model_factory import models_for_recipe
from .recipes import Recipe
from .trainer import Trainer

__all__ = ["train", "init_distributed", "shutdown_distributed"]


def train(
    recipe: Recipe,
    *,
    data=None,
    out_dir=None,
    teacher_weights=None,
    resume: bool = False,
    overwrite: bool = False,
    amp: bool = False,
    workers: int = 0,
    seed: int = 0,
    device=None,
    ckpt_every: int = 0,
    max_steps: int | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Builds the datasets (``data``: local path) and models of ``recipe`` and runs :class:`Trainer`.
    Joins the process group first when started by ``torchrun``. Returns the run summary."""
    if recipe.mode == "wld" and teacher_weights is None:
        raise ValueError(
            f"teacher: recipe {recipe.name!r} distils from a trained plain {recipe.model}; pass --teacher "
            f"WEIGHTS (a state_dict or a run's checkpoint.pt; nothing is downloaded)"
        )
    own_device = init_distributed()  # joins the process group under torchrun
    device = torch.device(device) if device is not None else own_device
    bundle = build_datasets(recipe.dataset, data, augment=recipe.augment, train_subset=recipe.train_subset, seed=seed)
    torch.manual_seed(seed)  # same initial weights on every rank (DDP also broadcasts them)
    model, teacher = models_for_recipe(recipe, bundle.num_classes, bundle.in_channels, teacher_weights)
    out_dir = Path(out_dir) if out_dir is not None else Path("runs") / f"{recipe.name}-{recipe.model}"
    trainer = Trainer(
        model,
        recipe,
        bundle.train,
        bundle.val,
        out_dir,
        teacher=teacher,
        val_ten_crop=bundle.val_ten_crop,
        device=device,
        amp=amp,
        workers=workers,
        seed=seed,
        ckpt_every=ckpt_every,
        overwrite=overwrite,
        progress=progress,
        log=log,
    )
    try:
        summary = trainer.fit(resume=resume, max_steps=max_steps)
    finally:
        trainer.close()
    summary["out_dir"] = str(out_dir)
    return summary
