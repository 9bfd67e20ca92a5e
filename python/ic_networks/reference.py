"""A plain-PyTorch copy of the IC convolution.

It is the test oracle, and the documented path for export formats that cannot hold the op
(ONNX, ``torch.jit.trace``): ``IcConv2d`` and ``functional.ic_conv2d`` switch to it only while such
an export is running (``ic_networks._ops.exporting``). It never stands in for the Rust op otherwise.

The box sum is a depthwise convolution with an all-ones kernel, so it exports as a standard Conv.
Being plain PyTorch, it is also differentiable twice, which the op is not: use it where a second
derivative is needed (a gradient penalty).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def boxsum_reference(x: Tensor, kernel_size: Sequence[int], stride=1, padding=0, dilation=1) -> Tensor:
    """Sum of every kh x kw window per channel, on the conv's output grid (zero padding)."""
    with warnings.catch_warnings():  # static sizes: constants in a jit trace or an ONNX graph
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        c, kh, kw = int(x.shape[1]), int(kernel_size[0]), int(kernel_size[1])
    ones = torch.ones(c, 1, kh, kw, dtype=x.dtype, device=x.device)
    return F.conv2d(x, ones, None, stride, padding, dilation, c)


def ic_conv2d_reference(
    x: Tensor,
    weight: Tensor,
    adjust_weight: Tensor,
    adjust_bias: Tensor,
    alpha: Tensor | float,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> Tensor:
    """``conv(x, W) + alpha * relu(conv(x, W) - conv1x1(boxsum(x), W') + b1) + b2``.

    As in the Rust op, b2 goes into the conv call (``y = conv(x, W) + b2``, the way ``nn.Conv2d``
    adds it) and ``Z = y - P + (b1 - b2)``, so with ``alpha = 0`` the result is ``conv2d(x, W, b2)``
    bit for bit. Under autocast the collision term stays in the conv's output dtype.
    """
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    s = boxsum_reference(x, weight.shape[2:], stride, padding, dilation)
    p = F.conv2d(s, adjust_weight, None, 1, 0, 1, groups)
    shift = adjust_bias if bias is None else adjust_bias - bias
    z = y - p + shift.to(y.dtype).view(1, -1, 1, 1)
    if isinstance(alpha, Tensor):
        alpha = alpha.to(y.dtype)
    return y + alpha * torch.relu(z)
