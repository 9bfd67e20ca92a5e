"""Functional API: the IC convolution and the WLD loss as PyTorch custom ops backed by Rust.

Ops registered in the ``ic_networks`` namespace (``torch.ops.ic_networks``):

* ``ic_conv2d_forward(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation,
  groups) -> (out, relu_z)``: the Rust forward (``src/ic_conv.rs``). ``relu_z`` is kept for the
  backward; it is not differentiable.
* ``ic_conv2d_backward(...) -> 6 tensors``: the Rust backward. Gradients that were not requested come
  back as empty tensors.
* ``ic_conv2d(x, weight, adjust_weight, adjust_bias, alpha, bias=None, stride=1, padding=0,
  dilation=1, groups=1) -> Tensor``: the public op, a composite of ``ic_conv2d_forward``.
* ``wld_loss(student_logits, teacher_logits, target, lam, e, tau) -> Tensor`` (``src/wld.rs``).

Each op has a fake (meta) implementation, so ``torch.compile(fullgraph=True)`` traces it, and
autocast rules for CPU and CUDA: under autocast the IC convolution runs in the autocast dtype, like
``nn.Conv2d`` (the collision term too; ``alpha`` stays in its own dtype and d alpha is accumulated
in float32).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _core
from ._utils import IntPair, pair, resolve_padding

__all__ = ["ic_conv2d", "wld_loss", "boxsum"]

_LIB = torch.library.Library("ic_networks", "FRAGMENT")


# --------------------------------------------------------------------------------------------------
# IC convolution
# --------------------------------------------------------------------------------------------------
@torch.library.custom_op("ic_networks::ic_conv2d_forward", mutates_args=())
def _ic_conv2d_forward(
    x: Tensor,
    weight: Tensor,
    adjust_weight: Tensor,
    adjust_bias: Tensor,
    alpha: Tensor,
    bias: Optional[Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
) -> Tuple[Tensor, Tensor]:
    return _core.ic_conv2d_forward(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups)


@_ic_conv2d_forward.register_fake
def _ic_conv2d_forward_fake(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups):
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return y, torch.empty_like(y)


@torch.library.custom_op("ic_networks::ic_conv2d_backward", mutates_args=())
def _ic_conv2d_backward(
    grad: Tensor,
    x: Tensor,
    weight: Tensor,
    adjust_weight: Tensor,
    adjust_bias: Tensor,
    alpha: Tensor,
    relu_z: Tensor,
    has_bias: bool,
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
    needs: List[bool],
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = _core.ic_conv2d_backward(
        grad, x, weight, adjust_weight, adjust_bias, alpha, relu_z, has_bias, stride, padding, dilation, groups, needs
    )
    return tuple(g if g is not None else x.new_empty(0) for g in grads)


@_ic_conv2d_backward.register_fake
def _ic_conv2d_backward_fake(grad, x, weight, adjust_weight, adjust_bias, alpha, relu_z, has_bias, stride, padding, dilation, groups, needs):
    like = [x, weight, adjust_weight, adjust_bias, alpha, adjust_bias]
    out = []
    for i, (need, t) in enumerate(zip(needs, like)):
        if need and (i != 5 or has_bias):
            out.append(torch.empty_like(t, memory_format=torch.preserve_format))
        else:
            out.append(x.new_empty(0))
    return tuple(out)


def _setup_context(ctx, inputs, output):
    x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups = inputs
    _, relu_z = output
    ctx.mark_non_differentiable(relu_z)
    ctx.save_for_backward(x, weight, adjust_weight, adjust_bias, alpha, relu_z)
    ctx.geometry = (list(stride), list(padding), list(dilation), int(groups))
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out, _grad_relu_z):
    n = ctx.needs_input_grad
    needs = [bool(n[0]), bool(n[1]), bool(n[2]), bool(n[3]), bool(n[4]), bool(n[5])]
    if grad_out is None or not any(needs):
        return (None,) * 10
    x, weight, adjust_weight, adjust_bias, alpha, relu_z = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.geometry
    grads = torch.ops.ic_networks.ic_conv2d_backward(
        grad_out, x, weight, adjust_weight, adjust_bias, alpha, relu_z, ctx.has_bias, stride, padding, dilation, groups, needs
    )
    out = [g if need else None for g, need in zip(grads, needs)]
    if not ctx.has_bias:
        out[5] = None
    return (*out, None, None, None, None)


_ic_conv2d_forward.register_autograd(_backward, setup_context=_setup_context)


def _register_autocast(opname: str, device_type: str, floating_args: Sequence[int]) -> None:
    """Autocast rule with the *current* autocast dtype (``torch.library.register_autocast`` only
    takes a fixed one). Casts the listed floating-point arguments, then runs below autocast."""
    key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    key = getattr(torch._C.DispatchKey, key_name)
    op = getattr(torch.ops.ic_networks, opname).default

    def kernel(_keyset, *args):
        dtype = torch.get_autocast_dtype(device_type)
        args = list(args)
        for i in floating_args:
            t = args[i]
            if isinstance(t, Tensor) and t.is_floating_point() and t.device.type == device_type:
                args[i] = t.to(dtype)
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(*args)

    _LIB.impl(opname, kernel, key_name, with_keyset=True)


for _dev in ("cpu", "cuda"):
    # x, weight, adjust_weight, adjust_bias, bias; alpha keeps its dtype.
    _register_autocast("ic_conv2d_forward", _dev, (0, 1, 2, 3, 5))


_LIB.define(
    "ic_conv2d(Tensor x, Tensor weight, Tensor adjust_weight, Tensor adjust_bias, Tensor alpha, "
    "Tensor? bias=None, int[2] stride=1, int[2] padding=0, int[2] dilation=1, int groups=1) -> Tensor"
)


def _ic_conv2d_composite(x, weight, adjust_weight, adjust_bias, alpha, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    return torch.ops.ic_networks.ic_conv2d_forward(
        x, weight, adjust_weight, adjust_bias, alpha, bias, list(stride), list(padding), list(dilation), groups
    )[0]


_LIB.impl("ic_conv2d", _ic_conv2d_composite, "CompositeImplicitAutograd")


def _check_tensor(name: str, t, optional: bool = False) -> None:
    if t is None and optional:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")


def ic_conv2d(
    x: Tensor,
    weight: Tensor,
    adjust_weight: Tensor,
    adjust_bias: Tensor,
    alpha: Union[Tensor, float],
    bias: Optional[Tensor] = None,
    stride: IntPair = 1,
    padding: Union[str, IntPair] = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> Tensor:
    """IC convolution (paper eq. 6/7):
    ``conv(x, W) + alpha * relu(conv(x, W) - conv1x1(boxsum(x), W') + b1) + b2``.

    Shapes: ``x`` (N, Cin, H, W) or unbatched (Cin, H, W); ``weight`` (Cout, Cin/groups, kh, kw);
    ``adjust_weight`` (Cout, Cin/groups, 1, 1); ``adjust_bias`` (Cout,); ``bias`` (Cout,) or None;
    ``alpha`` a scalar tensor or float. ``padding`` also takes ``'same'`` and ``'valid'``.
    Computed by the Rust core (``torch.ops.ic_networks.ic_conv2d``); differentiable in every tensor.
    """
    _check_tensor("x", x)
    _check_tensor("weight", weight)
    _check_tensor("adjust_weight", adjust_weight)
    _check_tensor("adjust_bias", adjust_bias)
    _check_tensor("bias", bias, optional=True)
    if not isinstance(alpha, Tensor):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise TypeError(f"alpha: expected a float or a scalar tensor, got {type(alpha).__name__}")
        alpha = torch.tensor(float(alpha), dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device)
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"groups: expected an int, got {groups!r}")
    stride_, dilation_ = pair("stride", stride), pair("dilation", dilation)
    if weight.dim() != 4:
        raise ValueError(f"weight: expected a 4-D (Cout, Cin/groups, kh, kw) tensor, got shape {tuple(weight.shape)}")
    padding_, extra = resolve_padding(padding, weight.shape[2:], dilation_, stride_)
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    if any(extra):
        x = F.pad(x, extra)
    out = torch.ops.ic_networks.ic_conv2d(x, weight, adjust_weight, adjust_bias, alpha, bias, stride_, padding_, dilation_, groups)
    return out.squeeze(0) if unbatched else out


def boxsum(x: Tensor, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1) -> Tensor:
    """Per-channel sum over every kh x kw window (zero padding), on a conv's output grid (Rust)."""
    _check_tensor("x", x)
    return _core.boxsum(x, pair("kernel_size", kernel_size), pair("stride", stride), pair("padding", padding), pair("dilation", dilation))


# --------------------------------------------------------------------------------------------------
# Weak logit distillation
# --------------------------------------------------------------------------------------------------
@torch.library.custom_op("ic_networks::wld_loss", mutates_args=())
def _wld_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, lam: float, e: float, tau: float) -> Tensor:
    return _core.wld_forward(student_logits, teacher_logits, target, lam, e, tau)[0]


@_wld_loss.register_fake
def _wld_loss_fake(student_logits, teacher_logits, target, lam, e, tau):
    return student_logits.new_empty(())


@torch.library.custom_op("ic_networks::wld_loss_backward", mutates_args=())
def _wld_loss_backward(grad: Tensor, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, lam: float, e: float, tau: float) -> Tensor:
    return _core.wld_backward(grad, student_logits, teacher_logits, target, lam, e, tau)


@_wld_loss_backward.register_fake
def _wld_loss_backward_fake(grad, student_logits, teacher_logits, target, lam, e, tau):
    return torch.empty_like(student_logits)


def _wld_setup(ctx, inputs, output):
    s, t, y, lam, e, tau = inputs
    ctx.save_for_backward(s, t, y)
    ctx.hp = (lam, e, tau)


def _wld_backward(ctx, grad):
    s, t, y = ctx.saved_tensors
    ds = torch.ops.ic_networks.wld_loss_backward(grad, s, t, y, *ctx.hp) if ctx.needs_input_grad[0] else None
    return ds, None, None, None, None, None


_wld_loss.register_autograd(_wld_backward, setup_context=_wld_setup)


def wld_loss(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, lam: float, e: float = 0.005, tau: float = 4.0
) -> Tensor:
    """Weak logit distillation loss (SPEC §4), computed in Rust (``src/wld.rs``)::

        L_kd = tau^2 * KL(softmax(t/tau) || softmax(s/tau)) summed over classes, averaged over the batch
        L    = (1 - lam) * CE(s, target) + lam * max(L_kd - e, 0)

    The hinge applies to the batch's L_kd. The teacher gets no gradient (it is detached). Half
    precision logits are computed in float32 and the loss is returned in the logits' dtype.
    """
    _check_tensor("student_logits", student_logits)
    _check_tensor("teacher_logits", teacher_logits)
    _check_tensor("target", target)
    for name, v in (("lam", lam), ("e", e), ("tau", tau)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name}: expected a float, got {type(v).__name__}")
    return torch.ops.ic_networks.wld_loss(student_logits, teacher_logits.detach(), target, float(lam), float(e), float(tau))


def wld_loss_parts(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, lam: float, e: float = 0.005, tau: float = 4.0):
    """``(loss, ce, kd)`` without gradient, for logging."""
    with torch.no_grad():
        return _core.wld_forward(student_logits.detach(), teacher_logits.detach(), target, float(lam), float(e), float(tau))
