"""What a training checkpoint carries besides the weights: the RNG states; and reading one back.

Checkpoints are written with :func:`ic_networks.io.atomic_save` (temporary file, fsync,
``os.replace``, fsync of the folder). They hold only tensors, numbers, strings and containers of
them, so :func:`ic_networks.io.load` (``torch.load(..., weights_only=True)``) reads them.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ..io import load

__all__ = ["load_checkpoint", "rng_state", "set_rng_state"]


def load_checkpoint(path) -> dict[str, Any]:
    """A checkpoint written by the trainer, read with :func:`ic_networks.io.load` (``weights_only``)."""
    return load(path, "checkpoint")


def rng_state() -> dict[str, Any]:
    """The torch (CPU and every CUDA device), numpy and python RNG states."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` captured (CUDA states only where the device count matches)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
