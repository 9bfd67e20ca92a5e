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

This module holds the fake (meta) kernels, which reproduce the real outputs' shapes, dtypes,
devices and strides, so ``torch.compile(fullgraph=True)`` and ``torch.export`` trace the ops and
``torch.library.opcheck`` passes, and the user-facing functions below.

Argument errors come from one validator, in Rust: the real kernels raise ``ValueError`` /
``TypeError`` / ``RuntimeError`` naming the argument, and the fake kernels call the same checks on
stand-in tensors with the fake tensors' shapes and dtypes (so ``torch.compile`` reports the same
messages). Python only converts what the ops' schemas cannot take (a float ``alpha``,
``padding='same'``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._mode_utils import no_dispatch

from . import _core  # registers the ops
from ._utils import IntPair, pair, resolve_padding
from .reference import ic_conv2d_reference

__all__ = ["ic_conv2d", "wld_loss", "wld_loss_parts", "WLDParts", "boxsum"]

_OPS = torch.ops.ic_networks
_IC_CONV2D = _OPS.ic_conv2d.default
_WLD_LOSS = _OPS.wld_loss.default
_BOXSUM = _OPS.boxsum.default


def _exporting() -> bool:
    """True while torch.onnx export or torch.jit.trace runs: formats that get the plain-PyTorch formula."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


# --------------------------------------------------------------------------------------------------
# Fake (meta) kernels
# --------------------------------------------------------------------------------------------------
class _NoHint(Exception):
    pass


def _export_reference(x: Tensor, *args) -> Tensor:
    """The plain-PyTorch formula (``reference.ic_conv2d_reference``), unbatched input included:
    what an ONNX export or ``torch.jit.trace`` records instead of the op."""
    unbatched = x.dim() == 3
    out = ic_conv2d_reference(x.unsqueeze(0) if unbatched else x, *args)
    return out.squeeze(0) if unbatched else out


@functools.cache
def _size_hint():
    """symbolic_shapes' hint of a symbolic size, looked up once (on first use: tracing has imported
    the module by then)."""
    try:
        from torch.fx.experimental.symbolic_shapes import optimization_hint
    except ImportError:  # torch < 2.12 calls it size_hint
        from torch.fx.experimental.symbolic_shapes import size_hint as optimization_hint
    return optimization_hint


def _stand_in(t: Tensor | None) -> Tensor | None:
    """A CPU tensor with ``t``'s shape and dtype on one element of storage (zero strides), for the
    Rust validator; symbolic sizes take their hint (no guard is added)."""
    if t is None:
        return None
    shape = []
    for s in t.shape:
        if type(s) is not int:
            try:
                s = _size_hint()(s)
            except Exception as e:  # an unbacked size: nothing to check it against
                raise _NoHint from e
        shape.append(int(s))
    return torch.empty_strided(shape, [0] * len(shape), dtype=t.dtype, device="cpu")


def _validate(check, tensors: Sequence[Tensor | None], *rest):
    """Runs a Rust validator of ``_core`` on stand-ins for ``tensors`` (outside every mode)."""
    try:
        with no_dispatch(), torch._C.DisableTorchFunction():
            stand_ins = [_stand_in(t) for t in tensors]
    except _NoHint:
        return None
    return check(*stand_ins, *rest)


def _tensor(name: str, t, optional: bool = False) -> None:
    """The ops' argument parser reports a non-tensor as a RuntimeError that dumps the value; this
    is the TypeError that names the argument."""
    if not isinstance(t, Tensor) and not (optional and t is None):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")


def _two(v: Sequence[int]) -> list[int]:
    return [v[0], v[0]] if len(v) == 1 else list(v)


def _boxsum_meta(x: Tensor, kh: int, kw: int, stride, padding, dilation) -> Tensor:
    """A tensor shaped, strided and typed like the box sum of ``x``."""
    ones = x.new_empty(x.shape[1], 1, kh, kw)
    return F.conv2d(x, ones, None, stride, padding, dilation, x.shape[1])


def _ic_conv2d_meta(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups):
    _validate(
        _core.check_ic_conv2d,
        (x, weight, adjust_weight, adjust_bias, alpha, bias),
        list(stride),
        list(padding),
        list(dilation),
        groups,
    )
    stride, padding, dilation = _two(stride), _two(padding), _two(dilation)
    # The same libtorch calls as the Rust forward, so the strides come out as the real ones:
    # out is laid out like y + p, relu_z like p (see src/ic_conv.rs).
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if x.shape[0] == 0:
        return y, torch.empty_like(y)
    s = _boxsum_meta(x, weight.shape[2], weight.shape[3], stride, padding, dilation)
    p = F.conv2d(s, adjust_weight, None, 1, 0, 1, groups)
    return y + p, p


@torch.library.register_fake("ic_networks::ic_conv2d_forward")
def _ic_conv2d_forward_fake(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups):
    return _ic_conv2d_meta(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups)


@torch.library.register_fake("ic_networks::ic_conv2d_inference")
def _ic_conv2d_inference_fake(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups):
    return _ic_conv2d_meta(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups)[0]


@torch.library.register_fake("ic_networks::ic_conv2d_backward")
def _ic_conv2d_backward_fake(
    grad, x, weight, adjust_weight, adjust_bias, alpha, relu_z, has_bias, stride, padding, dilation, groups, needs
):
    _validate(
        _core.check_ic_conv2d,
        (x, weight, adjust_weight, adjust_bias, alpha, None),
        list(stride),
        list(padding),
        list(dilation),
        groups,
    )
    stride, padding, dilation = _two(stride), _two(padding), _two(dilation)
    nx, nw, nwa, nb1, na, nb2 = needs
    nb2 = nb2 and has_bias
    cout = weight.shape[0]
    none = lambda: x.new_empty(0)  # noqa: E731  (a fresh one each time: outputs must not alias)
    if x.shape[0] == 0:  # the Rust backward returns zeros_like(...) of each argument
        like = (x, weight, adjust_weight, adjust_bias, alpha, adjust_bias)
        return tuple(torch.empty_like(t) if need else none() for need, t in zip((nx, nw, nwa, nb1, na, nb2), like))
    # Layouts as the real backward's: libtorch's convolution_backward for x, W and W'.
    dx, dw, _ = torch.ops.aten.convolution_backward(
        grad, x, weight, None, stride, padding, dilation, False, [0, 0], groups, [nx, nw, False]
    )
    dwa = None
    if nwa:
        s = _boxsum_meta(x, weight.shape[2], weight.shape[3], stride, padding, dilation)
        _, dwa, _ = torch.ops.aten.convolution_backward(
            grad, s, adjust_weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], groups, [False, True, False]
        )
    vec = lambda need: grad.new_empty(cout) if need else none()  # noqa: E731
    dalpha = torch.empty(alpha.shape, dtype=alpha.dtype, device=grad.device) if na else none()
    return (
        dx if nx else none(),
        dw if nw else none(),
        torch.empty_like(dwa) if nwa else none(),
        vec(nb1),
        dalpha,
        vec(nb2),
    )


@torch.library.register_fake("ic_networks::boxsum")
def _boxsum_fake(x, kernel_size, stride, padding, dilation):
    checked = _validate(_core.check_boxsum, (x,), list(kernel_size), list(stride), list(padding), list(dilation))
    kh, kw = checked[:2] if checked is not None else _two(kernel_size)
    return _boxsum_meta(x, kh, kw, _two(stride), _two(padding), _two(dilation))


@torch.library.register_fake("ic_networks::wld_loss")
def _wld_loss_fake(student_logits, teacher_logits, target, lam, e, tau):
    _validate(_core.check_wld, (student_logits, teacher_logits, target), lam, e, tau)
    return student_logits.new_empty(()), student_logits.new_empty(()), student_logits.new_empty(())


@torch.library.register_fake("ic_networks::wld_loss_backward")
def _wld_loss_backward_fake(grad, student_logits, teacher_logits, target, lam, e, tau):
    _validate(_core.check_wld, (student_logits, teacher_logits, target), lam, e, tau)
    return torch.empty_like(student_logits)


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
    if _exporting():
        return _export_reference(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups)
    return _IC_CONV2D(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups)


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
