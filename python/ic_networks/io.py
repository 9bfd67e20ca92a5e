"""Files: atomic writes, safe loading and state_dict unwrapping, shared by every part of ic-networks.

* **Atomic writes** (:func:`atomic_write`, :func:`atomic_save`, :func:`atomic_write_text`): the data
  goes to a temporary file in the destination folder, which is flushed and ``fsync``-ed, moved over
  the destination with ``os.replace`` (atomic on POSIX and Windows), and then the folder itself is
  ``fsync``-ed so that the rename survives a power loss. A crash leaves either the old file or the
  new one, never a torn one, and no temporary file behind. The file ends with the mode a plain
  ``open()`` would give it: ``0o666 & ~umask`` for a new file, the old file's mode when it replaces one.
* **Loading** (:func:`load`): ``torch.load(path, map_location="cpu", weights_only=True)``. Only
  tensors, numbers, strings and containers of them are read; a file that pickles anything else
  (a whole ``nn.Module``, an optimizer object, ...) is refused with an error that says so, instead
  of executing its pickle. Every file ic-networks writes passes. A file that cannot be read is a
  :class:`CheckpointError` whose one-line message says why: empty, truncated, corrupt, not a torch
  file (text, JSON, a plain pickle, ...), or pickling Python objects (see :func:`diagnose_file`).
* **State dicts** (:func:`unwrap_state_dict`, :func:`read_state_dict`, :func:`load_weights`): a
  training checkpoint holds the weights under ``"model"`` (or ``"state_dict"``, as mmengine and
  many scripts write them); ``DistributedDataParallel`` prefixes every key with ``module.`` and
  ``torch.compile`` with ``_orig_mod.``. All of these are unwrapped, so any of these files loads.
  :func:`load_weights` loads a plain model's state_dict into its IC version with alpha = 0 on every
  IC layer the state_dict has no IC parameters for, so the IC model computes the plain one.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import pickletools
import re
import stat
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .nn import IC_PARAM_NAMES, is_ic_layer

__all__ = [
    "atomic_write",
    "atomic_save",
    "atomic_write_text",
    "load",
    "unwrap_state_dict",
    "read_state_dict",
    "load_weights",
    "CheckpointError",
    "diagnose_file",
    "WRAPPER_KEYS",
    "KEY_PREFIXES",
]

logger = logging.getLogger("ic_networks")

PathLike = str | os.PathLike

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


def _umask() -> int:
    """The process's umask (read from /proc where there is one: setting it to read it is racy)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(path: Path) -> int:
    """The permission bits ``open(path, "w")`` would leave: the existing file's, else 0o666 & ~umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def atomic_write(path: PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Calls ``write(fileobj)`` on a temporary file next to ``path`` and moves it to ``path``
    (see the module docstring). The folder is created if missing; the file gets the mode ``open()``
    would give it. Returns ``path`` as a ``Path``."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode: expected 'wb' or 'w', got {mode!r}")
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, _final_mode(path))  # mkstemp creates it 0600
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


class CheckpointError(RuntimeError, ValueError):
    """A file that :func:`load` cannot read. The message is one line, ``"<what>: cannot read '<path>'
    ...: <reason>"``; ``kind`` is the reason's class (see :func:`diagnose_file`) and ``path`` the file."""

    def __init__(self, message: str, kind: str, path: PathLike) -> None:
        super().__init__(message)
        self.kind, self.path = kind, os.fspath(path)


#: torch.save's zip archives start with a local file header; its pickles (and the legacy format's)
#: with the PROTO opcode and a protocol number.
_ZIP_MAGIC = b"PK\x03\x04"
#: The first pickle of a legacy (``_use_new_zipfile_serialization=False``) torch file is this number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
#: Phrases of torch's weights_only messages that mean "this pickle names a Python object to build
#: or call": an unsupported/blocked global, class or reduce function (torch 2.x wordings).
_GLOBAL_PATTERNS = (
    r"GLOBAL (\S+) was not an allowed global",
    r"unsupported GLOBAL (\S+) whose module \S+ is blocked",
    r"Unsupported global:? (?:GLOBAL )?(\S+)",
    r"Unsupported class (\S+)",
    r"Trying to instantiate unsupported class (\S+)",
    r"Trying to call reduce for unrecognized function (\S+)",
    r"Can only (?:create new object|build) \S+ .* but got (\S+)",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _weights_only_reason(message: str) -> tuple | None:
    """``(kind, detail)`` from the text of a ``torch.load(weights_only=True)`` failure: ``("code",
    name)`` for a pickled Python object (``name``: the global it names), ``("opcode", n)`` for a
    pickle opcode the weights-only unpickler does not read, ``("other", line)`` for another refusal,
    ``None`` when the text is not a weights-only refusal. Looks for torch's own error phrases
    anywhere in the text, not at a line position, as torch's wrapper text around them changes
    between versions."""
    text = _ANSI.sub("", message)
    for pattern in _GLOBAL_PATTERNS:
        found = re.search(pattern, text)
        if found:
            return "code", found.group(1).rstrip(".,;")
    found = re.search(r"Unsupported operand (\d+)", text)
    if found:
        return "opcode", int(found.group(1))
    if "weights only load failed" not in text.lower() and "WeightsUnpickler error" not in text:
        return None
    # Anything else: torch's reason follows "WeightsUnpickler error:" (on the same line or after a
    # blank line), else "Weights only load failed."; the rest of the text is torch's boilerplate.
    tail = re.split(r"WeightsUnpickler error:|Weights only load failed\.", text, flags=re.I)[-1]
    boiler = ("In PyTorch 2.6", "Re-running `torch.load`", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in tail.splitlines() if line.strip() and not line.strip().startswith(boiler)]
    return "other", (lines[0] if lines else "")


def _pickle_problem(f, count: int) -> tuple | None:
    """Parses (never runs) up to ``count`` consecutive pickles from ``f`` with ``pickletools``:
    ``("truncated", None)`` if the data ends inside one, ``("corrupt", error)`` for another error
    (a byte that is no pickle opcode, ...), else ``None``."""
    for _ in range(count):
        try:
            for _op in pickletools.genops(f):
                pass
        except Exception as exc:  # noqa: BLE001 -- genops raises ValueError, its argument decoders others
            if not f.read(1):  # it stopped at the end of the data
                return "truncated", None
            return "corrupt", str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def _is_legacy_magic(f) -> bool:
    """Whether the first pickle in ``f`` is the legacy torch format's magic number (parsed, not run)."""
    try:
        ops = [(op.name, arg) for op, arg, _pos in pickletools.genops(f)]
    except Exception:  # noqa: BLE001 -- not a pickle that parses
        return False
    return [name for name, _ in ops] == ["PROTO", "LONG1", "STOP"] and ops[1][1] == _LEGACY_MAGIC


def _is_text(head: bytes, whole: bool) -> bool:
    """Whether ``head``, the file's first bytes (``whole``: all of them), is UTF-8 text."""
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if whole or exc.start < len(head) - 3:  # not just a character cut at the end of the sample
            return False
        text = head[: exc.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\n\r\f" for c in text)


def diagnose_file(path: PathLike, error: str | BaseException = "") -> tuple:
    """Why ``path`` is not a checkpoint ``torch.load(weights_only=True)`` reads: ``(kind, reason)``,
    ``reason`` one sentence, ``kind`` one of

    * ``"empty"``: the file has no bytes;
    * ``"truncated"``: it starts like a torch file (a zip archive, or a legacy torch pickle) but ends early;
    * ``"corrupt"``: it is damaged, or in no format torch reads (random bytes);
    * ``"not_torch"``: it is another kind of file: text, JSON, a zip archive without torch's
      ``data.pkl``, or a pickle written by ``pickle.dump``;
    * ``"code"``: it pickles Python objects (a class, a function: loading it would run code);
    * ``"unreadable"``: torch refused it for another reason, given in ``reason``.

    The file's structure is checked first (reading it, never unpickling it); ``error``, torch's
    error (or its text), decides only between the last kinds. See :func:`load`.
    """
    message = str(error)
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "empty", "the file is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(65536)
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
                if pkl is None:
                    return "not_torch", (
                        f"it is a zip archive without the data.pkl of a torch.save file ({len(names)} entries)"
                    )
                bad = z.testzip()
                if bad is not None:
                    return "corrupt", f"the file is corrupt: its entry {bad!r} fails its checksum"
                with z.open(pkl) as data:
                    problem = _pickle_problem(data, 1)
        except zipfile.BadZipFile:
            return "truncated", (
                f"the file is truncated or damaged: it starts as a zip archive (torch.save's format) but "
                f"its end, the zip directory, is missing ({size} bytes); it was probably cut off while written "
                f"or copied"
            )
        if problem is not None:
            kind, detail = problem
            if kind == "truncated":
                return "corrupt", f"the file is corrupt: its {pkl} ends in the middle of the pickle"
            return "corrupt", f"the file is corrupt: its {pkl} is not a valid pickle ({detail})"
    elif head[:1] == pickle.PROTO and head[1:2] and head[1] <= pickle.HIGHEST_PROTOCOL:
        with open(path, "rb") as f:
            if not _is_legacy_magic(f):
                return "not_torch", (
                    "it is a Python pickle (as pickle.dump writes), not a torch.save file; torch.load reads "
                    "only torch.save's format"
                )
            problem = _pickle_problem(f, 4)  # protocol, system info, the object, the storage keys
        if problem is not None:
            kind, detail = problem
            if kind == "truncated":
                return "truncated", f"the file is truncated: it is a legacy torch file that ends early ({size} bytes)"
            return "corrupt", f"the file is corrupt: its pickle data is damaged ({detail})"
    elif _is_text(head, whole=len(head) == size):
        if size <= 64 << 20:
            try:
                json.loads(path.read_text(encoding="utf-8"))
                return "not_torch", "it is a JSON file, not a torch.save checkpoint"
            except (ValueError, UnicodeDecodeError):
                pass
        return "not_torch", "it is a text file, not a torch.save checkpoint"
    else:
        return "corrupt", (
            f"the file is corrupt or not a torch file: it is neither a zip archive (torch.save's format) "
            f"nor a pickle (it starts with bytes {head[:8].hex(' ')})"
        )
    if isinstance(error, EOFError) or "unexpected EOF" in message:
        return "truncated", f"the file is truncated: its data ends early ({size} bytes)"
    reason = _weights_only_reason(message)
    if reason is None:
        lines = [line.strip() for line in _ANSI.sub("", message).splitlines() if line.strip()]
        return "unreadable", (lines[0] if lines else "torch.load failed")
    kind, detail = reason
    if kind == "code":
        return "code", (
            f"it pickles Python objects (Unsupported global: {detail}), not only tensors, numbers, strings and "
            f"containers, and unpickling them would run code; ic-networks loads with torch.load(weights_only=True). "
            f"Save a plain state_dict instead (torch.save(model.state_dict(), path))"
        )
    if kind == "opcode":
        return "corrupt", (
            f"the file is corrupt: its pickle data has opcode {detail}, which torch's weights-only unpickler does "
            f"not read (a damaged file, or one saved with a pickle protocol torch.save does not use)"
        )
    return "unreadable", f"torch.load(weights_only=True) refused it: {detail}" if detail else "torch.load refused it"


def load(path: PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with clear errors.

    ``what`` names the argument in the messages (``"checkpoint"``, ``"weights"``, ...). A missing
    file is a ``FileNotFoundError``. A file that cannot be read is a :class:`CheckpointError` (a
    ``RuntimeError`` and a ``ValueError``) with a one-line message naming ``what``, the file and
    the reason (:func:`diagnose_file`): empty, truncated, corrupt, not a torch file, or pickling
    Python objects (which ``weights_only`` refuses before anything runs).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what}: expected a path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file {str(path)!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- unpickling errors have many types
        kind, reason = diagnose_file(path, exc)
        safely = " safely" if kind == "code" else ""
        raise CheckpointError(f"{what}: cannot read {str(path)!r}{safely}: {reason}", kind, path) from exc


def _strip_prefixes(keys):
    """Removes a wrapper prefix as long as *every* key carries it (so ``module.module.x`` of a
    model with a child named ``module`` only loses the wrapper's), nested ones included
    (``module._orig_mod.``: a compiled model inside DDP)."""
    keys = list(keys)
    while keys:
        for p in KEY_PREFIXES:
            if all(k.startswith(p) for k in keys):
                keys = [k[len(p) :] for k in keys]
                break
        else:
            return keys
    return keys


def unwrap_state_dict(obj: Any, what: str = "weights", source: PathLike | None = None) -> dict[str, torch.Tensor]:
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
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        where = f"{os.fspath(source)!r} " if source is not None else ""
        raise RuntimeError(
            f"{what}: {where}does not hold a state_dict (a dict of tensors, or a checkpoint with one under "
            f"{' or '.join(repr(k) for k in WRAPPER_KEYS)}), got {type(obj).__name__}"
        )
    return dict(zip(_strip_prefixes(obj.keys()), obj.values()))


def read_state_dict(source: PathLike | Mapping[str, Any], what: str = "weights") -> dict[str, torch.Tensor]:
    """:func:`unwrap_state_dict` of a path (read with :func:`load`) or of a mapping."""
    if isinstance(source, (str, os.PathLike)):
        return unwrap_state_dict(load(source, what), what, source)
    if isinstance(source, Mapping):
        return unwrap_state_dict(source, what)
    raise TypeError(f"{what}: expected a path or a state_dict, got {type(source).__name__}")


def load_weights(
    model: nn.Module, source: PathLike | Mapping[str, Any], what: str = "weights", *, plain_alpha: float = 0.0
) -> nn.Module:
    """Loads ``source`` (a path, a state_dict or a checkpoint; see :func:`read_state_dict`) into
    ``model``; returns ``model``.

    Loading is strict, except that a plain model's state_dict loads into its IC version: an IC
    layer (``adjust_weight``, ``adjust_bias``, ``alpha``) may have all of its IC keys missing, and
    then gets alpha = ``plain_alpha`` (default 0: the layer computes the plain one bit for bit; W'
    and b1 keep their initialisation). One line on the ``ic_networks`` logger (INFO) says how many
    layers that was. Any other missing or unexpected key (one IC key of a layer missing but not
    the others included), or a shape mismatch, is a ``RuntimeError`` naming ``what``.
    """
    from .nn import quiet_plain_loads

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if isinstance(plain_alpha, bool) or not isinstance(plain_alpha, (int, float)):
        raise TypeError(f"plain_alpha: expected a float, got {type(plain_alpha).__name__}")
    state = read_state_dict(source, what)
    where = repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else "the state_dict"
    layers = [(f"{name}." if name else "", m) for name, m in model.named_modules() if is_ic_layer(m)]
    plain = [(prefix, m) for prefix, m in layers if not any(prefix + k in state for k in IC_PARAM_NAMES)]
    try:
        with quiet_plain_loads():  # the IC layers' own load hooks warn; this function logs instead
            result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: torch lists every one, keep the first three
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        more = f" (and {len(lines) - 3} more)" if len(lines) > 3 else ""
        raise RuntimeError(
            f"{what}: cannot load {where} into {type(model).__name__}: {'; '.join(lines[:3])}{more}"
        ) from None
    missing = set(result.missing_keys)
    expected = {prefix + k for prefix, _ in plain for k in IC_PARAM_NAMES}
    if result.unexpected_keys or missing != expected:
        raise RuntimeError(
            f"{what}: {where} does not match {type(model).__name__}: unexpected keys "
            f"{sorted(result.unexpected_keys)[:8]}, missing keys {sorted(missing - expected)[:8]} "
            f"(only all three IC keys of an IC layer may be missing, for a plain layer's weights)"
        )
    for _, m in plain:
        m.set_alpha(plain_alpha)
    if plain:
        logger.info(
            "%s: %d of %d IC layers of %s had no IC parameters in %s (plain weights): they start at alpha = %g",
            what,
            len(plain),
            len(layers),
            type(model).__name__,
            where,
            plain_alpha,
        )
    return model
