"""The CPU kernels' scratch pool: ``cpu_workspace_bytes``, ``release_cpu_workspace`` and
``set_cpu_workspace_limit``.

On CPU the IC op's kernels keep the temporaries that never leave a call (the 1x1's output in the
forward, the gradients into the two convolutions in the backward) in a pool and reuse them in the
next call of the same shape, instead of asking the allocator for fresh pages every time. A buffer
is reused only once nothing outside the pool holds it (no tensor, view or alias of its memory).
The pool keeps at most ``IC_NETWORKS_CPU_WORKSPACE_MB`` MiB (default 512; 0 keeps nothing), or what
``set_cpu_workspace_limit`` sets; these functions are to the pool what
``torch.cuda.memory_reserved`` and ``torch.cuda.empty_cache`` are to PyTorch's CUDA cache.

>>> import ic_networks.memory as icm
>>> freed_to = icm.release_cpu_workspace()  # bytes still held by calls that are running
>>> old = icm.set_cpu_workspace_limit(64 << 20)  # keep at most 64 MiB between calls
>>> _ = icm.set_cpu_workspace_limit(old)
"""

from __future__ import annotations

from . import _core

__all__ = ["cpu_workspace_bytes", "release_cpu_workspace", "set_cpu_workspace_limit"]


def cpu_workspace_bytes() -> int:
    """Bytes the pool holds now, buffers in use and free ones."""
    return _core.cpu_workspace_bytes()


def release_cpu_workspace() -> int:
    """Frees every buffer no call is using; returns the bytes still held (by running calls)."""
    return _core.release_cpu_workspace()


def set_cpu_workspace_limit(nbytes: int) -> int:
    """Keeps at most ``nbytes`` bytes between calls (0: none), freeing free buffers beyond it at once;
    returns the old limit."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise TypeError(f"set_cpu_workspace_limit: nbytes must be an int, got {type(nbytes).__name__}")
    if nbytes < 0:
        raise ValueError(f"set_cpu_workspace_limit: nbytes must be >= 0, got {nbytes}")
    return _core.set_cpu_workspace_limit(min(nbytes, 1 << 62))
