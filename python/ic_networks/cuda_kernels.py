"""The fused CUDA kernels of the IC layer: availability, the switch, warm-up.

The IC op runs its CUDA calls either on the libtorch ops (the default) or on fused kernels that
the Rust core compiles at run time with NVRTC (docs/cuda-kernels.md). The fused route is opt-in
until it has been validated on a GPU:

>>> from ic_networks import cuda_kernels
>>> cuda_kernels.available()                  # libcuda with a device, and NVRTC (torch's CUDA wheel)
>>> cuda_kernels.warm_up("cuda:0")            # compile or load from the disk cache, before capture
>>> with cuda_kernels.enabled_route():        # or IC_NETWORKS_CUDA_KERNELS=1 for the whole process
...     model(x).sum().backward()             # the switch is read per call: keep backward inside
>>> cuda_kernels.calls()                      # op steps that ran on the fused kernels so far

Calls the kernels do not take (other dtypes, sizes past int32 indexing, a halo too large for
shared memory) run on the libtorch ops; :func:`calls` tells whether the route was really taken.
On a machine without a driver, or with CPU-only torch, nothing here fails: :func:`available` is
``False`` and the op uses its other paths.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from . import _core

__all__ = ["available", "unavailable_reason", "enabled", "set_enabled", "enabled_route", "warm_up", "calls"]


def available() -> bool:
    """Whether the fused kernels can run here: libcuda reports a device and NVRTC loads."""
    return bool(_core.cuda_fused_available())


def unavailable_reason() -> str | None:
    """Why :func:`available` is ``False`` (``None`` when it is ``True``)."""
    return _core.cuda_fused_unavailable_reason()


def enabled() -> bool:
    """Whether the op takes the fused route now: the switch is on and the kernels are available."""
    return bool(_core.cuda_fused_enabled())


def set_enabled(on: bool) -> None:
    """Turns the switch on or off for this process (overrides ``IC_NETWORKS_CUDA_KERNELS``)."""
    if not isinstance(on, bool):
        raise TypeError(f"on: expected a bool, got {type(on).__name__}")
    _core.cuda_fused_set_enabled(on)


@contextlib.contextmanager
def enabled_route(on: bool = True) -> Iterator[None]:
    """Runs the block with the switch on (or off, with ``on=False``) and restores it afterwards."""
    was = enabled()
    set_enabled(on)
    try:
        yield
    finally:
        _core.cuda_fused_set_enabled(was)


def _ordinal(device: None | int | str | torch.device) -> int:
    if device is None:
        if not torch.cuda.is_available():
            raise RuntimeError(f"device: no CUDA device is available (fused CUDA kernels: {unavailable_reason()})")
        return torch.cuda.current_device()
    if isinstance(device, bool) or not isinstance(device, (int, str, torch.device)):
        raise TypeError(f"device: expected a CUDA device (int, str or torch.device), got {type(device).__name__}")
    if isinstance(device, int):
        if device < 0:
            raise ValueError(f"device: expected a CUDA ordinal >= 0, got {device}")
        return device
    try:
        d = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device: {e}") from None
    if d.type != "cuda":
        raise ValueError(f"device: expected a CUDA device, got {str(d)!r}")
    return d.index if d.index is not None else torch.cuda.current_device()


def warm_up(device: None | int | str | torch.device = None) -> dict[str, object]:
    """Compiles (or reads from the disk cache) and loads the kernels on ``device`` (default: the
    current CUDA device). Call it before capturing a CUDA graph; otherwise the first call on a
    device does it. Returns ``{"compute_capability", "cubin", "from_cache"}``. RuntimeError when
    the kernels are not available."""
    ordinal = _ordinal(device)
    if not available():
        raise RuntimeError(f"fused CUDA kernels unavailable: {unavailable_reason()}")
    return dict(_core.cuda_fused_warm_up(ordinal))


def calls() -> int:
    """How many op steps (forwards, collision backwards, strided P-path backwards) have run on the
    fused kernels in this process."""
    return int(_core.cuda_fused_calls())
