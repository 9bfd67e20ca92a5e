"""Atomic file writes and the RNG state that a checkpoint carries.

Every file is written to a temporary file in the destination folder, flushed and fsync'ed, then
moved over the destination with ``os.replace`` (atomic on POSIX and Windows): a crash leaves either
the old file or the new one, never a torn one. Checkpoints hold only tensors, numbers, strings and
containers of them, so ``torch.load(..., weights_only=True)`` reads them.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np
import torch

__all__ = ["atomic_write", "atomic_save", "atomic_write_text", "load_checkpoint", "rng_state", "set_rng_state"]


def atomic_write(path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Calls ``write(fileobj)`` on a temporary file next to ``path``, then renames it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_save(obj: Any, path) -> Path:
    """``torch.save(obj, path)``, atomically."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def load_checkpoint(path) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- unreadable or foreign file
        raise RuntimeError(f"checkpoint: cannot read {path}: {exc}") from exc


def rng_state() -> Dict[str, Any]:
    """The torch (CPU and every CUDA device), numpy and python RNG states."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restores what :func:`rng_state` captured (CUDA states only where the device count matches)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
