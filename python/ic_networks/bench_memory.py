"""Peak memory of one step (a train step of the model benchmark in :mod:`ic_networks.bench`).

The peak is the most memory the step holds at once above what was allocated when it began: what is
resident before the step (parameters, optimizer state, the input batch) is left out, what the step
allocates through PyTorch's allocator (gradients, the activations kept for the backward, temporaries,
workspaces) counts.

* CUDA: ``torch.cuda.max_memory_allocated`` after the step minus ``torch.cuda.memory_allocated``
  before it, the peak statistics reset just before the step.
* CPU: ``torch.profiler`` with ``profile_memory=True`` over the step records every allocation and
  free of PyTorch's CPU allocator as a ``[memory]`` event with a signed byte count; the peak is the
  largest running sum of those counts in time order (:func:`peak_of_deltas`). The raw events come
  from the profiler's Kineto results: ``prof.events()`` folds the allocations made inside an op into
  that op and keeps only the ones made outside any op, so the allocations themselves are lost there.
  Memory taken outside PyTorch's allocator (the small per-row buffers of the Rust kernels, a
  library's own scratch) is not seen. The IC kernels' scratch pool (:mod:`ic_networks.memory`) is
  emptied before the step, so the buffers the step takes from it are allocated, and counted, inside
  the step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

__all__ = ["cpu_memory_deltas", "peak_of_deltas", "step_peak_bytes"]


def peak_of_deltas(deltas: Iterable[int]) -> int:
    """The largest running sum of ``deltas`` (bytes allocated, positive, or freed, negative, in time
    order), starting from 0: the most memory held at once above the starting point. Never below 0
    (the starting point itself counts), e.g. ``[+100, +50, -100, +30]`` -> 150."""
    held = peak = 0
    for d in deltas:
        held += d
        peak = max(peak, held)
    return peak


def cpu_memory_deltas(prof) -> list[int]:
    """The signed byte counts of the CPU allocations and frees that the finished profiler ``prof``
    (``torch.profiler.profile(profile_memory=True)``) recorded, in time order."""
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())  # stable: events of the same instant keep their order
    return [e.nbytes() for e in events]


def step_peak_bytes(step: Callable[[], object], device: torch.device) -> int:
    """Runs ``step()`` once on ``device`` and returns its peak memory in bytes (module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise ValueError(f"peak memory is measured on cpu and cuda, not {device.type}")
    from torch.profiler import ProfilerActivity, profile

    from .memory import release_cpu_workspace

    release_cpu_workspace()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    deltas = cpu_memory_deltas(prof)
    if not deltas:
        raise RuntimeError("torch.profiler recorded no CPU memory events for the step")
    return peak_of_deltas(deltas)
