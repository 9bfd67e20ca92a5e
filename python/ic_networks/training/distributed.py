"""Process-group helpers for DDP under ``torchrun``: rank and world size, this process's device,
joining the process group (with a collective timeout) and leaving it without a teardown hang,
errors that name the rank, and the all-reduce of metric sums.

Under ``torchrun --nproc_per_node=N`` every process reads ``WORLD_SIZE`` and ``LOCAL_RANK`` from the
environment; :func:`init_distributed` joins the group (nccl on CUDA, gloo on CPU). A single process
(no ``WORLD_SIZE``, or 1) never initialises a process group, and every helper here then acts as
the one-process case.
"""

from __future__ import annotations

import datetime
import gc
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "dist_info",
    "default_device",
    "dist_timeout",
    "init_distributed",
    "release_ddp_reducers",
    "shutdown_distributed",
    "rank_error",
    "all_reduce",
    "DIST_TIMEOUT_ENV",
]


def dist_info():
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


DIST_TIMEOUT_ENV = "IC_NETWORKS_DIST_TIMEOUT"


def dist_timeout() -> datetime.timedelta:
    """How long a collective may wait for the other ranks before it fails (seconds in
    ``$IC_NETWORKS_DIST_TIMEOUT``, default 1800, torch's own default)."""
    raw = os.environ.get(DIST_TIMEOUT_ENV, "1800")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{DIST_TIMEOUT_ENV}: expected a positive number of seconds, got {raw!r}")
    return datetime.timedelta(seconds=seconds)


def init_distributed() -> torch.device:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1) joins the process group (nccl on CUDA, gloo on CPU)
    with the collective timeout of :func:`dist_timeout`, and returns this process's device;
    otherwise just the default device."""
    device = default_device()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=dist_timeout())
    return device


def release_ddp_reducers() -> int:
    """Drops the C++ reducer (and its logger) of every live ``DistributedDataParallel`` wrapper in
    this process; returns how many wrappers were found. The wrappers are unusable afterwards.

    Why: a DDP reducer holds a reference to the process group, and Python frees a reducer while
    holding the GIL. If the reducer drops the *last* reference (the group was already destroyed),
    ``~ProcessGroupGloo`` joins gloo's worker threads with the GIL held, while a worker thread that
    is releasing a tensor Python knows (a finished broadcast's parameters) waits for the GIL: the
    process hangs forever at teardown. Released while the group is still registered, the reducer
    never holds the last reference; the registry's own references release the GIL when dropped."""
    gc.collect()  # wrappers only reachable through reference cycles
    found = 0
    ddp = nn.parallel.DistributedDataParallel
    for obj in gc.get_objects():
        if issubclass(type(obj), ddp):  # type(), not isinstance: no __class__ lookups on foreign objects
            found += 1
            for name in ("logger", "reducer"):
                if name in obj.__dict__:
                    obj.__dict__[name] = None
    gc.collect()
    return found


def shutdown_distributed(ok: bool = True) -> None:
    """Leaves the process group, if one is initialised: ``barrier`` (with ``ok``: every rank has
    finished its collectives, and rank 0, which hosts the rendezvous store, outlives the others'
    use of it), :func:`release_ddp_reducers`, then ``destroy_process_group``. Pass ``ok=False``
    on an error path, where a peer may be gone and a barrier would only wait for the timeout."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if ok:
            dist.barrier()
    finally:
        release_ddp_reducers()
        dist.destroy_process_group()


def rank_error(exc: BaseException) -> BaseException:
    """``exc`` with this process's rank in front, for an error under DDP (a collective that timed
    out or lost its peer says neither which rank saw it nor why)."""
    rank, world = dist_info()
    if world <= 1:
        return exc
    where = f"rank {rank} of {world}"
    if isinstance(exc, RuntimeError):
        hint = ""
        if isinstance(exc, dist.DistError) or "gloo" in str(exc).lower() or "timed out" in str(exc).lower():
            hint = " (a collective failed: another rank died, hangs or lost its connection)"
        return RuntimeError(f"{where}{hint}: {type(exc).__name__}: {exc}")
    if hasattr(exc, "add_note"):
        exc.add_note(f"raised on {where}")
    return exc


def all_reduce(t: Tensor) -> Tensor:
    """Sums ``t`` over the processes in place (a no-op in a single process); returns ``t``."""
    if dist_info()[1] > 1:
        dist.all_reduce(t)
    return t
