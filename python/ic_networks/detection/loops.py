"""Training and evaluation loops for torchvision detectors on VOC (used by ``ic-networks train-det``
and ``eval-det``).

Schedule (decision, mmdetection's 1x recipe rescaled): SGD with momentum 0.9 and weight decay 1e-4,
a linear warm-up from 0.001x over the first ``warmup_iters`` iterations, and the learning rate divided
by 10 at each epoch in ``lr_steps``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .voc import voc_map

__all__ = ["make_optimizer", "train_one_epoch", "predict", "evaluate", "append_jsonl"]


def make_optimizer(
    model: nn.Module, lr: float, iters_per_epoch: int, lr_steps: Sequence[int], warmup_iters: int = 500
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """SGD and a per-iteration scheduler (warm-up, then steps at the epochs in ``lr_steps``)."""
    if not (lr > 0):
        raise ValueError(f"lr: expected a positive float, got {lr!r}")
    if iters_per_epoch < 1:
        raise ValueError(f"iters_per_epoch: expected >= 1, got {iters_per_epoch}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    steps = sorted(int(s) for s in lr_steps)

    def factor(it: int) -> float:
        warm = 1.0 if it >= warmup_iters else 0.001 + (1 - 0.001) * it / warmup_iters
        return warm * 0.1 ** sum(it >= s * iters_per_epoch for s in steps)

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _to(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loader: DataLoader,
    device: torch.device,
    log_every: int = 20,
    log=print,
) -> dict[str, float]:
    """One epoch; returns the mean of each loss term and of their sum (``'loss'``). A non-finite loss
    stops training with a RuntimeError rather than corrupting the weights."""
    model.train()
    sums: dict[str, float] = {}
    n = 0
    t0 = time.time()
    for i, (images, targets) in enumerate(loader):
        images = [im.to(device, non_blocking=True) for im in images]
        losses = model(images, _to(targets, device))
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss at iteration {i}: { {k: float(v) for k, v in losses.items()} }")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        n += 1
        for k, v in {**losses, "loss": loss}.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        if log_every and (i + 1) % log_every == 0:
            log(
                f"  iter {i + 1}/{len(loader)} loss {sums['loss'] / n:.4f} lr {optimizer.param_groups[0]['lr']:.2e} "
                f"({(time.time() - t0) / n:.2f} s/iter)"
            )
    return {k: v / max(n, 1) for k, v in sums.items()}


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[list[dict], list[dict]]:
    """Eval-mode predictions and the matching targets, on the CPU."""
    model.eval()
    preds, gts = [], []
    for images, targets in loader:
        out = model([im.to(device) for im in images])
        preds += [{k: v.cpu() for k, v in o.items()} for o in out]
        gts += targets
    return preds, gts


def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device, class_metrics: bool = True
) -> dict[str, float]:
    """VOC mAP@0.5 (see :func:`ic_networks.detection.voc.voc_map`)."""
    preds, gts = predict(model, loader, device)
    return voc_map(preds, gts, class_metrics=class_metrics)


def append_jsonl(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(
            json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()})
            + "\n"
        )
