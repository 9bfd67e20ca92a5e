"""Small argument helpers shared by the functional API and the modules: type normalisation only
(the values are checked by the Rust core)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

IntPair = int | Sequence[int]


def pair(name: str, value: IntPair) -> list[int]:
    """``3 -> [3, 3]``, ``(1, 2) -> [1, 2]``; anything else raises a clear error."""
    if type(value) is int:  # fast paths
        return [value, value]
    if type(value) in (list, tuple) and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return [value[0], value[1]]
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
    if isinstance(value, numbers.Integral):
        return [int(value), int(value)]
    if (
        isinstance(value, (tuple, list))
        and len(value) in (1, 2)
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
    ):
        return [int(v) for v in value] * (2 // len(value))
    raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")


def resolve_padding(
    padding: str | IntPair, kernel: Sequence[int], dilation: Sequence[int], stride: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Turns ``padding`` (int, pair, ``'same'`` or ``'valid'``) into a symmetric padding and an extra
    right/bottom zero padding ``[0, extra_w, 0, extra_h]`` for ``F.pad`` (non-zero only for
    ``'same'`` with an even dilated kernel, as ``nn.Conv2d`` does it)."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0], [0, 0, 0, 0]
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError("padding='same' is not supported for strided convolutions (as in nn.Conv2d)")
            sym, extra = [], []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                left = total // 2
                sym.append(left)
                extra.append(total - 2 * left)
            return sym, [0, extra[1], 0, extra[0]]
        raise ValueError(f"padding: expected 'same', 'valid', an int or a pair of ints, got {padding!r}")
    return pair("padding", padding), [0, 0, 0, 0]
