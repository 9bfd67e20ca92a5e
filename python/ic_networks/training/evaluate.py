"""Evaluation of a classifier: top-1/top-5 accuracy and mean cross-entropy, single- or multi-crop,
in one process or split across the processes of a DDP run; plus the autocast and progress-bar
conventions that evaluation and training share.

* **AMP** (``amp=True``): autocast in bfloat16 on CPU, float16 on CUDA; losses and accuracies are
  computed on float32 logits.
* **Multi-crop**: a dataset whose samples are ``(n_crops, C, H, W)`` (10-crop) is evaluated on the
  average of the crops' logits.
* **DDP**: each rank evaluates every ``world_size``-th sample and the sums are all-reduced (no
  padding, so every sample counts exactly once).
* **Progress**: tqdm bars on rank 0 when stderr is a terminal (``progress=None``); without bars,
  ``log`` (when given) gets a line at least every ``log_every_s`` seconds.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .distributed import all_reduce, dist_info

__all__ = ["evaluate", "autocast", "show_progress", "PROGRESS_EVERY_S"]

#: Without progress bars, seconds between two progress lines in the log (training and evaluation).
PROGRESS_EVERY_S = 20.0


def show_progress(progress: bool | None, rank: int) -> bool:
    """Whether to draw progress bars: ``progress``, or when it is None, whether stderr is a
    terminal; never on a rank other than 0."""
    tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
    return (progress if progress is not None else tty) and rank == 0


def autocast(device: torch.device, enabled: bool):
    """The AMP context: bfloat16 on CPU, float16 on CUDA (``enabled=False``: full precision)."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
    amp: bool = False,
    workers: int = 0,
    progress: bool | None = None,
    desc: str = "eval",
    log: Callable[[str], None] | None = None,
    log_every_s: float = PROGRESS_EVERY_S,
) -> dict[str, float]:
    """``{"top1", "top5", "loss", "n"}`` of ``model`` on ``dataset`` (accuracies in percent).

    Samples of shape ``(n_crops, C, H, W)`` are multi-crop: the logits of the crops are averaged.
    top-5 is top-``min(5, classes)``. Under DDP the dataset is split across ranks and the result
    is the all-reduced total (every rank returns it). Without a progress bar, ``log`` gets a line
    every ``log_every_s`` seconds (the first after ``log_every_s``).
    """
    if len(dataset) == 0:
        raise ValueError("dataset: cannot evaluate on an empty dataset")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    rank, world = dist_info()
    shard = Subset(dataset, range(rank, len(dataset), world)) if world > 1 else dataset
    loader = DataLoader(
        shard, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda"
    )
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    show = show_progress(progress, rank)
    try:
        from tqdm.auto import tqdm

        last_line = time.monotonic()
        for i, (x, y) in enumerate(tqdm(loader, desc=desc, leave=False, disable=not show)):
            if log is not None and not show and rank == 0 and time.monotonic() - last_line >= log_every_s:
                last_line = time.monotonic()
                log(f"{desc}: batch {i + 1}/{len(loader)}")
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            crops = x.dim() == 5
            if crops:
                b, n = x.shape[:2]
                x = x.flatten(0, 1)
            with autocast(device, amp):
                logits = model(x)
            logits = logits.float()
            if crops:
                logits = logits.view(b, n, -1).mean(1)
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hit = top.eq(y.unsqueeze(1))
            sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
            sums[1] += hit[:, 0].sum()
            sums[2] += hit.any(1).sum()
            sums[3] += y.numel()
    finally:
        model.train(was_training)
    loss, top1, top5, n = all_reduce(sums).tolist()
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n, "n": int(n)}
