"""The one internal entry point to the IC convolution op, for :mod:`ic_networks.functional` and
:mod:`ic_networks.nn`.

:func:`ic_conv2d` calls ``torch.ops.ic_networks.ic_conv2d`` with arguments already in the op's
form, except while an ONNX export or ``torch.jit.trace`` runs: those formats cannot hold the op,
so they record the plain-PyTorch formula (:func:`ic_networks.reference.ic_conv2d_reference`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _core  # noqa: F401  -- registers the ops
from .reference import ic_conv2d_reference

__all__ = ["OPS", "exporting", "ic_conv2d"]

#: The ops of the native library (``torch.ops.ic_networks``).
OPS = torch.ops.ic_networks
_IC_CONV2D = OPS.ic_conv2d.default


def exporting() -> bool:
    """True while torch.onnx export or torch.jit.trace runs: formats that get the plain-PyTorch formula."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def ic_conv2d(x: Tensor, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups) -> Tensor:
    """The op on ``x`` (batched or unbatched), or the plain formula while exporting (module docstring)."""
    if exporting():
        unbatched = x.dim() == 3
        out = ic_conv2d_reference(
            x.unsqueeze(0) if unbatched else x,
            weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups,
        )  # fmt: skip
        return out.squeeze(0) if unbatched else out
    return _IC_CONV2D(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups)
