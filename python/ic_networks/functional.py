"""Functional API: the IC convolution, the box sum and the WLD loss, as PyTorch ops of the native library.

The ops are defined and implemented in C++ (``src/cpp/``, with ``TORCH_LIBRARY`` /
``TORCH_LIBRARY_IMPL``) with the Rust kernels behind them, and registered when ``ic_networks`` is
imported. They live in the ``ic_networks`` namespace (``torch.ops.ic_networks``):

* ``ic_conv2d(x, weight, adjust_weight, adjust_bias, alpha, bias=None, stride=1, padding=0,
  dilation=1, groups=1) -> Tensor``: the public op (CompositeImplicitAutograd). It runs
  ``ic_conv2d_forward`` when a gradient may be needed, else ``ic_conv2d_inference``.
* ``ic_conv2d_forward(...) -> (out, relu_z)``: the forward that keeps ``relu_z`` for the backward
  (not differentiable). Autograd, AutocastCPU and AutocastCUDA kernels are registered in C++.
* ``ic_conv2d_inference(...) -> out``: the forward without a backward to serve (``relu_z`` is not
  written); it refuses a backward.
* ``ic_conv2d_backward(...) -> 6 tensors``: gradients that were not requested come back as empty
  tensors. Double backward (differentiating a gradient taken with ``create_graph=True``, as a
  gradient penalty does) is not supported: it raises a ``RuntimeError`` that names
  :func:`ic_networks.reference.ic_conv2d_reference`, the twice-differentiable plain-PyTorch formula.
* ``boxsum(x, kernel_size, stride, padding, dilation) -> Tensor``: differentiable (twice).
* ``wld_loss(student_logits, teacher_logits, target, lam, e, tau) -> (loss, ce, kd)`` and its
  ``wld_loss_backward``.

This module holds the user-facing functions below and registers the ops' fake (meta) kernels
(:mod:`ic_networks._fake`), so ``torch.compile(fullgraph=True)`` and ``torch.export`` trace the ops
and ``torch.library.opcheck`` passes.

Argument errors come from one validator, in Rust: the real kernels raise ``ValueError`` /
``TypeError`` / ``RuntimeError`` naming the argument, and the fake kernels call the same checks on
stand-in tensors with the fake tensors' shapes and dtypes (so ``torch.compile`` reports the same
messages). Python only converts what the ops' schemas cannot take (a float ``alpha``,
``padding='same'``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _fake, _ops
from ._ops import OPS
from ._utils import IntPair, pair, resolve_padding

__all__ = ["ic_conv2d", "wld_loss", "wld_loss_parts", "WLDParts", "boxsum"]

_WLD_LOSS = OPS.wld_loss.default
_BOXSUM = OPS.boxsum.default

# The fake kernels live in _fake.py; they are registered here, in the module that the C++ library
# names as their home (``set_python_module("ic_networks.functional")``).
for _op, _kernel in _fake.KERNELS.items():
    torch.library.register_fake(f"ic_networks::{_op}", _kernel)


def _tensor(name: str, t, optional: bool = False) -> None:
    """The ops' argument parser reports a non-tensor as a RuntimeError that dumps the value; this
    is the TypeError that names the argument."""
    if not isinstance(t, Tensor) and not (optional and t is None):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")


# --------------------------------------------------------------------------------------------------
# IC convolution
# --------------------------------------------------------------------------------------------------
def ic_conv2d(
    x: Tensor,
    weight: Tensor,
    adjust_weight: Tensor,
    adjust_bias: Tensor,
    alpha: Tensor | float,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: str | IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> Tensor:
    """IC convolution (paper eq. 6/7):
    ``conv(x, W) + alpha * relu(conv(x, W) - conv1x1(boxsum(x), W') + b1) + b2``.

    Shapes: ``x`` (N, Cin, H, W) or unbatched (Cin, H, W); ``weight`` (Cout, Cin/groups, kh, kw);
    ``adjust_weight`` (Cout, Cin/groups, 1, 1); ``adjust_bias`` (Cout,); ``bias`` (Cout,) or None;
    ``alpha`` a scalar tensor or float. ``padding`` also takes ``'same'`` and ``'valid'``.
    Computed by the Rust core (``torch.ops.ic_networks.ic_conv2d``); differentiable in every tensor.
    A channels_last ``x`` gives a channels_last output and input gradient. While an ONNX export or
    ``torch.jit.trace`` runs, the plain-PyTorch formula (``ic_networks.reference``) is used instead,
    which those formats can hold.

    **Autocast.** Under ``torch.autocast`` (CUDA float16/bfloat16, CPU bfloat16) the op runs like
    ``nn.Conv2d``: float32 ``x``, W, W', b1 and b2 are cast to the autocast dtype and the output has
    that dtype; ``alpha`` keeps its dtype and gets a gradient in it (d alpha is accumulated in
    float32); the other gradients come back in the parameters' dtype. The collision term is
    computed in the autocast dtype too: ``Z = Y - conv1x1(S, W') + b1`` is a difference of two
    rounded convolutions, so its absolute error is about ``eps * (|Y| + |P|)`` (eps = 2**-8 for
    bfloat16, 2**-11 for float16), and where ``|Z|`` is below that the relu mask may flip; the
    term's error is then scaled by ``|alpha|``, which is small (0.01-0.04) after WLD. See
    docs/pytorch-native.md for measured figures.
    """
    _tensor("x", x)
    _tensor("weight", weight)
    _tensor("adjust_weight", adjust_weight)
    _tensor("adjust_bias", adjust_bias)
    _tensor("bias", bias, optional=True)
    if not isinstance(alpha, Tensor):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise TypeError(f"alpha: expected a float or a scalar tensor, got {type(alpha).__name__}")
        alpha = torch.tensor(float(alpha), dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device)
    if isinstance(groups, bool):
        raise TypeError(f"groups: expected an int, got {groups!r}")
    if isinstance(padding, str):
        if weight.dim() != 4:
            raise ValueError("weight: expected a 4-D (Cout, Cin/groups, kh, kw) tensor with padding='same'/'valid'")
        padding, extra = resolve_padding(padding, weight.shape[2:], pair("dilation", dilation), pair("stride", stride))
        if any(extra):
            x = F.pad(x, extra)
    return _ops.ic_conv2d(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups)


# --------------------------------------------------------------------------------------------------
# Box sum
# --------------------------------------------------------------------------------------------------
def boxsum(x: Tensor, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1) -> Tensor:
    """Per-channel sum over every kh x kw window (zero padding), on a conv's output grid (Rust).

    ``x`` (N, C, H, W) -> (N, C, Ho, Wo). Differentiable in ``x`` (the adjoint is the transposed box
    sum); an op (``torch.ops.ic_networks.boxsum``) that ``torch.compile`` traces.
    """
    _tensor("x", x)
    return _BOXSUM(
        x,
        pair("kernel_size", kernel_size),
        pair("stride", stride),
        pair("padding", padding),
        pair("dilation", dilation),
    )


# --------------------------------------------------------------------------------------------------
# Weak logit distillation
# --------------------------------------------------------------------------------------------------
class WLDParts(NamedTuple):
    """What one WLD loss call returns: the loss and its two parts."""

    loss: Tensor  #: ``(1 - lam) * ce + lam * max(kd - e, 0)``, differentiable w.r.t. the student logits
    ce: Tensor  #: cross-entropy with the targets (no gradient)
    kd: Tensor  #: the distillation term L_kd before the hinge (no gradient)


def _hyper(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name}: expected a float, got {type(v).__name__}")
    return float(v)


def wld_loss_parts(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, lam: float, e: float = 0.005, tau: float = 4.0
) -> WLDParts:
    """The WLD loss and its parts in one call: ``(loss, ce, kd)`` (see :func:`wld_loss`).

    ``loss`` carries the gradient w.r.t. ``student_logits``; ``ce`` and ``kd`` are for logging
    and carry none. On CUDA the class indices are checked on the device (no host sync).
    """
    _tensor("student_logits", student_logits)
    _tensor("teacher_logits", teacher_logits)
    _tensor("target", target)
    return WLDParts(
        *_WLD_LOSS(student_logits, teacher_logits, target, _hyper("lam", lam), _hyper("e", e), _hyper("tau", tau))
    )


def wld_loss(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, lam: float, e: float = 0.005, tau: float = 4.0
) -> Tensor:
    """Weak logit distillation loss, computed in Rust (``src/wld.rs``)::

        L_kd = tau^2 * KL(softmax(t/tau) || softmax(s/tau)) summed over classes, averaged over the batch
        L    = (1 - lam) * CE(s, target) + lam * max(L_kd - e, 0)

    The hinge applies to the batch's L_kd. The teacher gets no gradient. Half precision logits are
    computed in float32 and the loss is returned in the logits' dtype. :func:`wld_loss_parts`
    returns ``(loss, ce, kd)`` from the same single call.
    """
    return wld_loss_parts(student_logits, teacher_logits, target, lam, e, tau).loss
