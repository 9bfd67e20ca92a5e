"""Argument checks shared by the Python modules (the command line's parsers build on them)."""
from __future__ import annotations

__all__ = ["positive_int", "nonnegative_int"]


def positive_int(name: str, value) -> int:
    """``value`` if it is an int >= 1 (not a bool), else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    return value


def nonnegative_int(name: str, value) -> int:
    """``value`` if it is an int >= 0 (not a bool), else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
    return value
