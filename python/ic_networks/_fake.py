"""The fake (meta) kernels of the ops of the native library.

Each reproduces the real outputs' shapes, dtypes, devices and strides, so ``torch.compile(fullgraph=True)``
and ``torch.export`` trace the ops and ``torch.library.opcheck`` passes. :data:`KERNELS` maps each op
to its kernel; :mod:`ic_networks.functional`, the module that the C++ library names as their home
(``set_python_module``), registers them.

Argument errors come from one validator, in Rust: the fake kernels call the same checks as the real
ones (``_core.check_ic_conv2d``, ``check_boxsum``, ``check_wld``) on stand-in tensors with the fake
tensors' shapes and dtypes, so ``torch.compile`` reports the same messages.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._mode_utils import no_dispatch

from . import _core
from ._utils import pair

__all__ = ["KERNELS"]


class _NoHint(Exception):
    pass


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


def _geometry(stride, padding, dilation) -> tuple[list[int], list[int], list[int]]:
    return pair("stride", stride), pair("padding", padding), pair("dilation", dilation)


def _boxsum_meta(x: Tensor, kh: int, kw: int, stride, padding, dilation) -> Tensor:
    """A tensor shaped, strided and typed like the box sum of ``x``."""
    ones = x.new_empty(x.shape[1], 1, kh, kw)
    return F.conv2d(x, ones, None, stride, padding, dilation, x.shape[1])


def _ic_conv2d_meta(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups):
    tensors = (x, weight, adjust_weight, adjust_bias, alpha, bias)
    _validate(_core.check_ic_conv2d, tensors, list(stride), list(padding), list(dilation), groups)
    stride, padding, dilation = _geometry(stride, padding, dilation)
    # The same libtorch calls as the Rust forward, so the strides come out as the real ones:
    # out is laid out like y + p, relu_z like p (see src/ic_conv.rs).
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if x.shape[0] == 0:
        return y, torch.empty_like(y)
    s = _boxsum_meta(x, weight.shape[2], weight.shape[3], stride, padding, dilation)
    p = F.conv2d(s, adjust_weight, None, 1, 0, 1, groups)
    return y + p, p


def _ic_conv2d_forward_fake(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups):
    return _ic_conv2d_meta(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups)


def _ic_conv2d_inference_fake(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups):
    return _ic_conv2d_meta(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups)[0]


def _ic_conv2d_backward_fake(
    grad, x, weight, adjust_weight, adjust_bias, alpha, relu_z, has_bias, stride, padding, dilation, groups, needs
):
    tensors = (x, weight, adjust_weight, adjust_bias, alpha, None)
    _validate(_core.check_ic_conv2d, tensors, list(stride), list(padding), list(dilation), groups)
    stride, padding, dilation = _geometry(stride, padding, dilation)
    nx, nw, nwa, nb1, na, nb2 = needs
    nb2 = nb2 and has_bias
    cout = weight.shape[0]

    def none():  # a fresh one each time: outputs must not alias
        return x.new_empty(0)

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

    def vec(need):
        return grad.new_empty(cout) if need else none()

    dalpha = torch.empty(alpha.shape, dtype=alpha.dtype, device=grad.device) if na else none()
    return (
        dx if nx else none(),
        dw if nw else none(),
        torch.empty_like(dwa) if nwa else none(),
        vec(nb1),
        dalpha,
        vec(nb2),
    )


def _boxsum_fake(x, kernel_size, stride, padding, dilation):
    checked = _validate(_core.check_boxsum, (x,), list(kernel_size), list(stride), list(padding), list(dilation))
    kh, kw = checked[:2] if checked is not None else pair("kernel_size", kernel_size)
    return _boxsum_meta(x, kh, kw, *_geometry(stride, padding, dilation))


def _wld_loss_fake(student_logits, teacher_logits, target, lam, e, tau):
    _validate(_core.check_wld, (student_logits, teacher_logits, target), lam, e, tau)
    return student_logits.new_empty(()), student_logits.new_empty(()), student_logits.new_empty(())


def _wld_loss_backward_fake(grad, student_logits, teacher_logits, target, lam, e, tau):
    _validate(_core.check_wld, (student_logits, teacher_logits, target), lam, e, tau)
    return torch.empty_like(student_logits)


#: op name (in the ``ic_networks`` namespace) -> its fake kernel
KERNELS: dict[str, Callable] = {
    "ic_conv2d_forward": _ic_conv2d_forward_fake,
    "ic_conv2d_inference": _ic_conv2d_inference_fake,
    "ic_conv2d_backward": _ic_conv2d_backward_fake,
    "boxsum": _boxsum_fake,
    "wld_loss": _wld_loss_fake,
    "wld_loss_backward": _wld_loss_backward_fake,
}
