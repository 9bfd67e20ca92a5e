"""A plain-PyTorch copy of the IC convolution.

It is the test oracle, and the documented path for export formats that cannot hold a custom op
(ONNX, ``torch.jit.trace``): ``IcConv2d`` switches to it only while such an export is running
(see ``nn.IcConv2d.forward``). It never stands in for the Rust op otherwise.

The box sum is a depthwise convolution with an all-ones kernel, so it exports as a standard Conv.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor


def boxsum_reference(x: Tensor, kernel_size: Sequence[int], stride=1, padding=0, dilation=1) -> Tensor:
    """Sum of every kh x kw window per channel, on the conv's output grid (zero padding)."""
    c = x.shape[1]
    ones = torch.ones(c, 1, int(kernel_size[0]), int(kernel_size[1]), dtype=x.dtype, device=x.device)
    return F.conv2d(x, ones, None, stride, padding, dilation, c)


def ic_conv2d_reference(
    x: Tensor,
    weight: Tensor,
    adjust_weight: Tensor,
    adjust_bias: Tensor,
    alpha: Union[Tensor, float],
    bias: Optional[Tensor] = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> Tensor:
    """``conv(x, W) + alpha * relu(conv(x, W) - conv1x1(boxsum(x), W') + b1) + b2``, literally."""
    y = F.conv2d(x, weight, None, stride, padding, dilation, groups)
    s = boxsum_reference(x, weight.shape[2:], stride, padding, dilation)
    p = F.conv2d(s, adjust_weight, None, 1, 0, 1, groups)
    z = y - p + adjust_bias.view(1, -1, 1, 1)
    out = y + alpha * torch.relu(z)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out
