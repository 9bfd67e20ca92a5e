"""Schedules stepped once per optimiser step: the WLD weight lambda, alpha, and the learning rate.

Conventions (decisions):

* **lambda** falls from ``start`` (0.9) to ``end`` (0.1) along a half cosine over the optimiser
  steps: ``lam(s) = end + (start - end) * (1 + cos(pi * s / (total - 1))) / 2``. Step 0 gets exactly
  ``start`` and the last step (``total - 1``) exactly ``end``; steps past the end stay at ``end``.
  The cosine keeps lambda near 0.9 early on, while the student still learns mostly from the teacher,
  and lets it settle near 0.1 at the end. ``shape="linear"`` is the straight line between the same
  end points.
* **alpha** is either learnt (the IC layers are built with ``alpha_mode="learnable"`` and nothing
  is scheduled) or ramped by hand: :class:`AlphaRamp` calls ``set_alpha`` on every IC layer
  (``IcConv2d`` and MobileNet's ``IcDepthwiseSeparable`` alike) before each step, linearly from
  ``start`` to ``end`` over ``total`` steps (same end-point convention as lambda).
* **learning rate**: :class:`LrFactor` is the multiplier given to ``torch.optim.lr_scheduler.LambdaLR``
  (stepped per optimiser step, so a resumed run continues mid-epoch): ``"step"`` divides by
  ``1/gamma`` at each milestone *epoch* (the paper's recipes), ``"cosine"`` decays to 0 over the
  run; both with an optional linear warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from .._checks import positive_int
from ..nn import ic_layers

__all__ = ["progress", "LambdaSchedule", "AlphaRamp", "LrFactor", "ic_layers", "milestones_every", "SHAPES"]

SHAPES = ("cosine", "linear")


def _check_total(total_steps) -> int:
    return positive_int("total_steps", total_steps)


def progress(step: int, total_steps: int) -> float:
    """Fraction of the run done at ``step`` (0-based): 0.0 at step 0, 1.0 at step ``total - 1`` and after."""
    total_steps = _check_total(total_steps)
    if step < 0:
        raise ValueError(f"step: expected >= 0, got {step}")
    if total_steps == 1:
        return 1.0 if step > 0 else 0.0
    return min(1.0, step / (total_steps - 1))


def _interpolate(start: float, end: float, t: float, shape: str) -> float:
    if shape == "cosine":
        w = 0.5 * (1.0 + math.cos(math.pi * t))
    else:
        w = 1.0 - t
    if t >= 1.0:  # exact end point, whatever the rounding of cos(pi)
        return float(end)
    return float(end) + (float(start) - float(end)) * w


class LambdaSchedule:
    """WLD weight lambda per optimiser step, from ``start`` to ``end`` (module docstring)."""

    def __init__(self, total_steps: int, start: float = 0.9, end: float = 0.1, shape: str = "cosine") -> None:
        self.total_steps = _check_total(total_steps)
        for name, v in (("start", start), ("end", end)):
            if not (0.0 <= float(v) <= 1.0):
                raise ValueError(f"{name}: lambda must lie in [0, 1], got {v!r}")
        if shape not in SHAPES:
            raise ValueError(f"shape: expected one of {SHAPES}, got {shape!r}")
        self.start, self.end, self.shape = float(start), float(end), shape

    def __call__(self, step: int) -> float:
        return _interpolate(self.start, self.end, progress(step, self.total_steps), self.shape)


class AlphaRamp:
    """Sets alpha of every IC layer of ``model`` (:func:`ic_networks.ic_layers`) by hand: linear from
    ``start`` to ``end`` over ``total_steps`` optimiser steps. Call it with the step index before each step."""

    def __init__(self, model: nn.Module, total_steps: int, start: float = 0.0, end: float = 0.02) -> None:
        self.layers = ic_layers(model)
        if not self.layers:
            raise ValueError(
                "model: an alpha ramp needs a model with IC layers (IcConv2d, IcDepthwiseSeparable, ...), found none"
            )
        self.total_steps = _check_total(total_steps)
        self.start, self.end = float(start), float(end)

    def value(self, step: int) -> float:
        return _interpolate(self.start, self.end, progress(step, self.total_steps), "linear")

    def __call__(self, step: int) -> float:
        a = self.value(step)
        for layer in self.layers:
            layer.set_alpha(a)
        return a


class LrFactor:
    """Learning-rate multiplier per optimiser step for ``LambdaLR`` (module docstring).

    ``milestones`` are epochs (``"step"`` shape); ``warmup_steps`` ramps linearly from
    ``1/(warmup_steps+1)`` to 1. Only plain numbers are stored, so ``LambdaLR.state_dict`` keeps it.
    """

    def __init__(
        self,
        shape: str,
        steps_per_epoch: int,
        total_steps: int,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        warmup_steps: int = 0,
    ) -> None:
        if shape not in ("step", "cosine", "constant"):
            raise ValueError(f"lr_schedule: expected 'step', 'cosine' or 'constant', got {shape!r}")
        self.shape = shape
        self.steps_per_epoch = _check_total(steps_per_epoch)
        self.total_steps = _check_total(total_steps)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        f = 1.0
        if self.shape == "step":
            epoch = step // self.steps_per_epoch
            f = self.gamma ** sum(1 for m in self.milestones if epoch >= m)
        elif self.shape == "cosine":
            f = 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / self.total_steps)))
        if step < self.warmup_steps:
            f *= (step + 1) / (self.warmup_steps + 1)
        return f


def milestones_every(period: int, epochs: int) -> list[int]:
    """``[period, 2*period, ...]`` below ``epochs`` (lr divided by 10 every ``period`` epochs)."""
    return list(range(period, epochs, period)) if period > 0 else []
