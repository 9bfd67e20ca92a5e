"""Import-time check that the running torch is the one the Rust core (``_core``) was built against.

The extension links libtorch's C++ API, which changes between torch minor releases: loaded into
another torch it fails with an undefined symbol or crashes later. build.rs stamps the torch version
into the library (``_core.built_torch_version()``); this module reads that stamp from the file,
before the library is loaded, and raises an ``ImportError`` naming both versions and the command
that rebuilds ic-networks against the running torch.
"""

from __future__ import annotations

import importlib.machinery
import mmap
import os
import re

import torch

MARKER = b"ic-networks-built-against-torch="
REBUILD = "pip install --no-build-isolation --no-deps --force-reinstall ."
# torch-sys does not notice a new torch in the same environment, hence the `cargo clean`.
REBUILD_COMMAND = f"cargo clean --release -p torch-sys && {REBUILD}"


def major_minor(version: str) -> tuple[int, int]:
    """``"2.15.0+cu132"`` -> ``(2, 15)``."""
    m = re.match(r"(\d+)\.(\d+)", version)
    if not m:
        raise ValueError(f"not a torch version: {version!r}")
    return int(m.group(1)), int(m.group(2))


def core_path() -> str | None:
    """The ``_core`` extension file next to this module, or None when there is none."""
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(here, "_core" + suffix)
        if os.path.isfile(path):
            return path
    return None


def read_stamp(path: str) -> str | None:
    """The torch version stamped into the extension at ``path`` (without loading it), or None."""
    try:
        f = open(path, "rb")
    except OSError:
        return None
    with f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        start = data.find(MARKER)
        if start < 0:
            return None
        start += len(MARKER)
        end = data.find(b"\0", start, start + 64)
        if end < 0:
            return None
        return data[start:end].decode("ascii", "replace")


def mismatch_message(built: str, running: str) -> str:
    return (
        f"ic_networks' Rust core was built against torch {built}, but torch {running} is installed "
        "(another major.minor: libtorch's C++ API differs, loading it would fail or crash). Rebuild "
        f"ic-networks against this torch, in its source directory: `{REBUILD_COMMAND}` "
        "(supported torch versions and other builds: docs/install.md)"
    )


def check(path: str | None = None, running: str | None = None) -> str | None:
    """Raise ImportError when the extension's torch major.minor differs from the running torch's.

    Returns the stamped version (None when the extension or its stamp is missing: then importing
    ``_core`` reports the problem itself).
    """
    path = path or core_path()
    running = running or torch.__version__
    if path is None:
        return None
    built = read_stamp(path)
    if built is None:
        return None
    if major_minor(built) != major_minor(running):
        raise ImportError(mismatch_message(built, running))
    return built


check()
