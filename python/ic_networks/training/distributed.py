"""Process-group helpers for DDP under ``torchrun``: rank and world size, this process's device,
joining the process group, and the all-reduce of metric sums.

Under ``torchrun --nproc_per_node=N`` every process reads ``WORLD_SIZE`` and ``LOCAL_RANK`` from the
environment; :func:`init_distributed` joins the group (nccl on CUDA, gloo on CPU). A single process
(no ``WORLD_SIZE``, or 1) never initialises a process group, and every helper here then acts as
the one-process case.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["dist_info", "default_device", "init_distributed", "all_reduce"]


def dist_info():
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed() -> torch.device:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1) joins the process group (nccl on CUDA, gloo on CPU)
    and returns this process's device; otherwise just the default device."""
    device = default_device()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def all_reduce(t: Tensor) -> Tensor:
    """Sums ``t`` over the processes in place (a no-op in a single process); returns ``t``."""
    if dist_info()[1] > 1:
        dist.all_reduce(t)
    return t
