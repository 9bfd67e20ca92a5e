"""Files: atomic writes, safe loading and state_dict unwrapping, shared by every part of ic-networks.

* **Atomic writes** (:func:`atomic_write`, :func:`atomic_save`, :func:`atomic_write_text`): the data
  goes to a temporary file in the destination folder, which is flushed and ``fsync``-ed, moved over
  the destination with ``os.replace`` (atomic on POSIX and Windows), and then the folder itself is
  ``fsync``-ed so that the rename survives a power loss. A crash leaves either the old file or the
  new one, never a torn one, and no temporary file behind.
* **Loading** (:func:`load`): ``torch.load(path, map_location="cpu", weights_only=True)``. Only
  tensors, numbers, strings and containers of them are read; a file that pickles anything else
  (a whole ``nn.Module``, an optimizer object, ...) is refused with an error that says so, instead
  of executing its pickle. Every file ic-networks writes passes.
* **State dicts** (:func:`unwrap_state_dict`, :func:`read_state_dict`, :func:`load_weights`): a
  training checkpoint holds the weights under ``"model"`` (or ``"state_dict"``, as mmengine and
  many scripts write them); ``DistributedDataParallel`` prefixes every key with ``module.`` and
  ``torch.compile`` with ``_orig_mod.``. All of these are unwrapped, so any of these files loads.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch
from torch import nn

from .layers import ic_keys

__all__ = [
    "atomic_write", "atomic_save", "atomic_write_text", "load", "unwrap_state_dict", "read_state_dict",
    "load_weights", "WRAPPER_KEYS", "KEY_PREFIXES",
]

PathLike = Union[str, os.PathLike]

#: Entries of a checkpoint dict that hold the model's state_dict, tried in this order.
WRAPPER_KEYS = ("model", "state_dict")
#: Key prefixes added by wrappers: ``DistributedDataParallel``/``DataParallel`` and ``torch.compile``.
KEY_PREFIXES = ("module.", "_orig_mod.")


def _fsync_dir(folder: Path) -> None:
    """fsync a directory so that a rename inside it is durable (a no-op where directories cannot be
    opened, as on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Calls ``write(fileobj)`` on a temporary file next to ``path`` and moves it to ``path``
    (see the module docstring). The folder is created if missing. Returns ``path`` as a ``Path``."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode: expected 'wb' or 'w', got {mode!r}")
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
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
    _fsync_dir(folder)
    return path


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj, path)``, atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: PathLike) -> Path:
    """Writes ``text`` to ``path``, atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(text), mode="w")


def load(path: PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with clear errors.

    ``what`` names the argument in the messages (``"checkpoint"``, ``"weights"``, ...). A missing
    file is a ``FileNotFoundError``; a file that ``weights_only`` refuses (it pickles Python objects,
    not only tensors and containers) or that is not a torch file at all is a ``RuntimeError``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what}: expected a path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file {str(path)!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- unpickling errors have many types
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if "weights only load failed" in text.lower() or "weights_only" in text:
            # torch's message starts with how to bypass the check; keep only the reason
            why = next((line for line in lines if "WeightsUnpickler error" in line or "Unsupported" in line), "")
            why = why.replace("WeightsUnpickler error: ", "").split(". Please")[0]
            raise RuntimeError(
                f"{what}: cannot read {str(path)!r} safely: it pickles Python objects, not only tensors, "
                f"numbers, strings and containers, and ic-networks loads with torch.load(weights_only=True). "
                f"Save a plain state_dict instead (torch.save(model.state_dict(), path))"
                + (f"; {why}" if why else "")
            ) from exc
        raise RuntimeError(f"{what}: cannot read {str(path)!r}: {lines[0] if lines else type(exc).__name__}") from exc


def _strip_prefixes(keys):
    """Removes a wrapper prefix as long as *every* key carries it (so ``module.module.x`` of a
    model with a child named ``module`` only loses the wrapper's), nested ones included
    (``module._orig_mod.``: a compiled model inside DDP)."""
    keys = list(keys)
    while keys:
        for p in KEY_PREFIXES:
            if all(k.startswith(p) for k in keys):
                keys = [k[len(p):] for k in keys]
                break
        else:
            return keys
    return keys


def unwrap_state_dict(obj: Any, what: str = "weights", source: Optional[PathLike] = None) -> Dict[str, torch.Tensor]:
    """The state_dict inside ``obj``: ``obj["model"]`` or ``obj["state_dict"]`` when present (a
    training checkpoint), with a ``module.`` / ``_orig_mod.`` prefix that every key carries removed.

    Raises a ``RuntimeError`` naming ``what`` (and the file ``source`` it came from, if given)
    unless the result is a dict of tensors.
    """
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        where = f"{os.fspath(source)!r} " if source is not None else ""
        raise RuntimeError(
            f"{what}: {where}does not hold a state_dict (a dict of tensors, or a checkpoint with one under "
            f"{' or '.join(repr(k) for k in WRAPPER_KEYS)}), got {type(obj).__name__}"
        )
    return dict(zip(_strip_prefixes(obj.keys()), obj.values()))


def read_state_dict(source: Union[PathLike, Mapping[str, Any]], what: str = "weights") -> Dict[str, torch.Tensor]:
    """:func:`unwrap_state_dict` of a path (read with :func:`load`) or of a mapping."""
    if isinstance(source, (str, os.PathLike)):
        return unwrap_state_dict(load(source, what), what, source)
    if isinstance(source, Mapping):
        return unwrap_state_dict(source, what)
    raise TypeError(f"{what}: expected a path or a state_dict, got {type(source).__name__}")


def load_weights(model: nn.Module, source: Union[PathLike, Mapping[str, Any]], what: str = "weights") -> nn.Module:
    """Loads ``source`` (a path, a state_dict or a checkpoint; see :func:`read_state_dict`) into
    ``model``; returns ``model``.

    Loading is strict, except that a plain model's state_dict loads into its IC version: exactly
    all of the IC keys (``adjust_weight``, ``adjust_bias``, ``alpha`` of every IC layer) may be
    missing, and then keep their initialisation. Any other missing or unexpected key, or a shape
    mismatch, is a ``RuntimeError`` naming ``what``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    state = read_state_dict(source, what)
    where = repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else "the state_dict"
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: torch lists every one, keep the first three
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        more = f" (and {len(lines) - 3} more)" if len(lines) > 3 else ""
        raise RuntimeError(
            f"{what}: cannot load {where} into {type(model).__name__}: {'; '.join(lines[:3])}{more}"
        ) from None
    missing, expected = set(result.missing_keys), ic_keys(model)
    if result.unexpected_keys or (missing and missing != expected):
        raise RuntimeError(
            f"{what}: {where} does not match {type(model).__name__}: unexpected keys "
            f"{sorted(result.unexpected_keys)[:8]}, missing keys {sorted(missing)[:8]} "
            f"(only all of the IC keys may be missing, for a plain checkpoint)"
        )
    return model
