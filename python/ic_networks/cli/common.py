"""Argument parsers shared by every verb of the ``ic-networks`` command line.

Each ``type=`` function turns a bad value into an ``argparse`` error that names the option (exit
status 2, usage printed), before any model or dataset is touched.
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from .._checks import nonnegative_int as _nonnegative_int
from .._checks import positive_int as _positive_int

__all__ = [
    "positive_int",
    "nonnegative_int",
    "device",
    "resolve_device",
    "add_device_argument",
    "add_workers_argument",
    "add_out_argument",
    "RAW",
    "plain",
    "add_verb",
    "UsageError",
]

#: Keeps the line breaks of a verb's description (recipe lists, module docstrings).
RAW = argparse.RawDescriptionHelpFormatter


_ROLE = re.compile(r":[a-z]+:`(~?)([^`]*)`")  # :mod:`ic_networks.bench`, :func:`~.evaluate.evaluate`
_LITERAL = re.compile(r"``([^`]*)``|`([^`]*)`")


def _role(m: re.Match) -> str:
    tilde, target = m.group(1), m.group(2).lstrip(".")
    return target.rsplit(".", 1)[-1] if tilde else target


def plain(text: str) -> str:
    """``text`` (a docstring) without its reST markup, for ``--help``: a role (``:mod:`x```) becomes
    its target (the last name with ``~``), a literal (double or single backquotes) its text."""
    text = _ROLE.sub(_role, text)
    return _LITERAL.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(2), text).strip()


class UsageError(Exception):
    """A combination of options a verb cannot run: ``ic-networks`` prints the verb's usage and this
    message, and exits with status 2, as for any other bad option."""


def add_verb(sub, name: str, help: str, description: str | None = None, **kw) -> argparse.ArgumentParser:
    """The parser of verb ``name``: ``help`` is its line in ``ic-networks --help`` and the first line
    of ``ic-networks NAME --help``, followed by ``description`` (plain text, without reST markup)."""
    first = help[:1].upper() + help[1:] + ("" if help.endswith(".") else ".")
    text = first + ("\n\n" + plain(description) if description else "")
    return sub.add_parser(name, help=help, description=text, **kw)


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None


def positive_int(s: str) -> int:
    """``type=`` for counts that must be >= 1 (epochs, batch sizes, ...)."""
    try:
        return _positive_int("value", _int(s))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {s!r}") from None


def nonnegative_int(s: str) -> int:
    """``type=`` for counts that may be 0 (loader workers, checkpoint period, ...)."""
    try:
        return _nonnegative_int("value", _int(s))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {s!r}") from None


def device(s: str):
    """``type=`` for ``--device``: ``auto`` (None: CUDA if available, under ``torchrun`` the
    process's ``LOCAL_RANK``; else the CPU), or a torch device string (``cpu``, ``cuda``,
    ``cuda:1``, ...). A CUDA device without CUDA is an error here, not a crash later."""
    import torch

    if s == "auto":
        return None
    try:
        dev = torch.device(s)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {s!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{s!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{s!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {s!r}")
    return dev


def resolve_device(value) -> torch.device:
    """The parsed ``--device`` as a ``torch.device`` (``None``/auto: the default device)."""
    if value is not None:
        return value
    from ..training.distributed import default_device

    return default_device()


def add_device_argument(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument(
        "--device",
        type=device,
        default=device(default),
        metavar="DEVICE",
        help=f"auto (CUDA if available), cpu, cuda, cuda:N (default {default})",
    )


def add_workers_argument(p: argparse.ArgumentParser, default: int = 0) -> None:
    p.add_argument(
        "--workers",
        type=nonnegative_int,
        default=default,
        metavar="N",
        help=f"data loader worker processes (default {default})",
    )


def add_out_argument(
    p: argparse.ArgumentParser, help: str, required: bool = False, default: str | None = None, metavar: str = "DIR"
) -> None:
    p.add_argument("--out", required=required, default=default, metavar=metavar, help=help)
