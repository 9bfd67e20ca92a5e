"""Functional API: the IC convolution, the box sum and the WLD loss as PyTorch custom ops backed by Rust.

Ops registered in the ``ic_networks`` namespace (``torch.ops.ic_networks``):

* ``ic_conv2d_forward(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation,
  groups) -> (out, relu_z)``: the Rust forward (``src/ic_conv.rs``). ``relu_z`` is kept for the
  backward; it is not differentiable.
* ``ic_conv2d_backward(...) -> 6 tensors``: the Rust backward. Gradients that were not requested come
  back as empty tensors.
* ``ic_conv2d(x, weight, adjust_weight, adjust_bias, alpha, bias=None, stride=1, padding=0,
  dilation=1, groups=1) -> Tensor``: the public op, a composite of ``ic_conv2d_forward``.
* ``boxsum(x, kernel_size, stride, padding, dilation) -> Tensor``: the Rust box sum, differentiable.
* ``wld_loss(student_logits, teacher_logits, target, lam, e, tau) -> Tensor`` (``src/wld.rs``) and
  its ``wld_loss_backward``.

Every op has a fake (meta) implementation that reproduces the real output's shape, dtype, device
and strides, so ``torch.compile(fullgraph=True)`` traces it and ``torch.library.opcheck`` passes.
``ic_conv2d_forward`` has autocast rules for CPU and CUDA (see :func:`ic_conv2d` for the precision).
Argument errors are ``ValueError`` / ``TypeError`` / ``RuntimeError`` naming the argument, raised
before the Rust core runs (and again under ``torch.compile``, by the fake implementations).
"""
from __future__ import annotations

import functools
import os
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import _core
from ._utils import IntPair, bounded_pair, conv_out_size, resolve_padding

__all__ = ["ic_conv2d", "wld_loss", "boxsum"]

_LIB = torch.library.Library("ic_networks", "FRAGMENT")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------------
# Argument checks shared by the real kernels and the fake ones
# --------------------------------------------------------------------------------------------------
def _geometry(stride, padding, dilation) -> Tuple[List[int], List[int], List[int]]:
    return bounded_pair("stride", stride, 1), bounded_pair("padding", padding, 0), bounded_pair("dilation", dilation, 1)


def _same_device(name: str, t: Tensor, x: Tensor) -> None:
    if t.device != x.device:
        raise RuntimeError(f"{name}: is on device {t.device} but x is on {x.device}")


def _check_ic_args(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups):
    """Validates the IC convolution's arguments; returns ``(n, cin, cout, ho, wo)``."""
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"x: expected a floating-point tensor (float16/bfloat16/float32/float64), got {x.dtype}")
    if weight.dim() != 4:
        raise ValueError(f"weight: expected a 4-D (Cout, Cin/groups, kh, kw) tensor, got shape {tuple(weight.shape)}")
    for name, t in (("weight", weight), ("adjust_weight", adjust_weight), ("adjust_bias", adjust_bias), ("bias", bias)):
        if t is not None:
            if t.dtype != x.dtype:
                raise TypeError(f"{name}: dtype {t.dtype} does not match x's dtype {x.dtype}")
            _same_device(name, t, x)
    if alpha.dtype not in _FLOATS:
        raise TypeError(f"alpha: expected a floating-point tensor, got {alpha.dtype}")
    if alpha.numel() != 1:
        raise ValueError(f"alpha: expected a scalar (one element), got shape {tuple(alpha.shape)}")
    if alpha.device != x.device and not (alpha.device.type == "cpu" and alpha.dim() == 0):
        raise RuntimeError(f"alpha: is on device {alpha.device} but x is on {x.device}")
    stride, padding, dilation = _geometry(stride, padding, dilation)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0:
        raise ValueError(f"groups: expected a positive integer, got {groups!r}")
    n, cin, h, w = x.shape
    if h == 0 or w == 0:  # libtorch's convolutions refuse them too, less clearly
        raise ValueError(f"x: expected a non-empty image (H, W >= 1), got shape {tuple(x.shape)}")
    cout, cin_g, kh, kw = weight.shape
    if min(cout, cin_g, kh, kw) <= 0:
        raise ValueError(f"weight: every dimension must be positive, got shape {tuple(weight.shape)}")
    if cin != cin_g * groups:
        raise ValueError(f"x: has {cin} channels but weight {tuple(weight.shape)} with groups={groups} expects {cin_g * groups}")
    if cout % groups:
        raise ValueError(f"groups: out_channels {cout} is not divisible by groups={groups}")
    for name, t, want in (("adjust_weight", adjust_weight, (cout, cin_g, 1, 1)), ("adjust_bias", adjust_bias, (cout,)), ("bias", bias, (cout,))):
        if t is not None and tuple(t.shape) != want:
            raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
    ho = conv_out_size(h, kh, stride[0], padding[0], dilation[0])
    wo = conv_out_size(w, kw, stride[1], padding[1], dilation[1])
    if ho < 1 or wo < 1:
        raise ValueError(
            f"x: spatial size ({h}, {w}) with padding {padding} is smaller than the dilated kernel "
            f"({dilation[0] * (kh - 1) + 1}, {dilation[1] * (kw - 1) + 1})"
        )
    return n, cin, cout, ho, wo


@functools.lru_cache(maxsize=None)
def _device_memory(device: torch.device) -> Optional[int]:
    """Total memory of ``device`` in bytes (None where unknown)."""
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device.index if device.index is not None else torch.cuda.current_device()).total_memory
    return None


def _check_memory(what: str, device: torch.device, shape: Sequence[int], n_bytes: int) -> None:
    """Refuses a call whose tensors cannot fit in the device's memory, before anything is allocated
    (absurd paddings, or expanded inputs of astronomic size, would otherwise ask for terabytes)."""
    cap = _device_memory(device)
    if cap is not None and n_bytes > cap:
        raise RuntimeError(
            f"{what}: the output of shape {tuple(shape)} and its temporaries need {n_bytes / 2**30:.3g} GiB, "
            f"more than the {cap / 2**30:.3g} GiB of memory on {device}; check the input size, stride, padding and dilation"
        )


def _boxsum_meta(x: Tensor, kh: int, kw: int, stride, padding, dilation) -> Tensor:
    """A tensor shaped, strided and typed like the box sum of ``x`` (for the fake kernels)."""
    ones = x.new_empty(x.shape[1], 1, kh, kw)
    return F.conv2d(x, ones, None, stride, padding, dilation, x.shape[1])


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
    n, cin, cout, ho, wo = _check_ic_args(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups)
    need = (x.numel() + weight.numel() + n * ho * wo * (2 * cout + cin)) * x.element_size()
    _check_memory("ic_conv2d", x.device, (n, cout, ho, wo), need)
    return _core.ic_conv2d_forward(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups)


@_ic_conv2d_forward.register_fake
def _ic_conv2d_forward_fake(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups):
    _check_ic_args(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups)
    stride, padding, dilation = _geometry(stride, padding, dilation)
    # The same libtorch calls as the Rust forward, so the strides come out as the real ones:
    # out is laid out like y + p, relu_z like p (see src/ic_conv.rs).
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if x.shape[0] == 0:
        return y, torch.empty_like(y)
    s = _boxsum_meta(x, weight.shape[2], weight.shape[3], stride, padding, dilation)
    p = F.conv2d(s, adjust_weight, None, 1, 0, 1, groups)
    return y + p, p


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
    if len(needs) != 6:
        raise ValueError(f"needs: expected 6 booleans, got {len(needs)}")
    _check_ic_args(x, weight, adjust_weight, adjust_bias, alpha, None, stride, padding, dilation, groups)
    stride, padding, dilation = _geometry(stride, padding, dilation)
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
    return (dx if nx else none(), dw if nw else none(), torch.empty_like(dwa) if nwa else none(), vec(nb1), dalpha, vec(nb2))


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
    if out[4] is not None:
        out[4] = out[4].to(alpha.device)  # d alpha is computed on x's device; alpha may be a CPU scalar
    if not ctx.has_bias:
        out[5] = None
    return (*out, None, None, None, None)


_ic_conv2d_forward.register_autograd(_backward, setup_context=_setup_context)


def _register_autocast(opname: str, device_type: str, floating_args: Sequence[int]) -> None:
    """Autocast rule with the *current* autocast dtype (``torch.library.register_autocast`` only
    takes a fixed one). Casts the listed float16/bfloat16/float32 arguments on ``device_type``, as
    autocast does for ``conv2d`` (float64 is left alone), then runs below autocast."""
    key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    key = getattr(torch._C.DispatchKey, key_name)
    op = getattr(torch.ops.ic_networks, opname).default

    def kernel(_keyset, *args):
        dtype = torch.get_autocast_dtype(device_type)
        args = list(args)
        for i in floating_args:
            t = args[i]
            if isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float64 and t.device.type == device_type:
                args[i] = t.to(dtype)
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(*args)

    _LIB.impl(opname, kernel, key_name, with_keyset=True)


for _dev in ("cpu", "cuda"):
    # x, weight, adjust_weight, adjust_bias, bias; alpha keeps its dtype.
    _register_autocast("ic_conv2d_forward", _dev, (0, 1, 2, 3, 5))


# --------------------------------------------------------------------------------------------------
# Eager fast path
# --------------------------------------------------------------------------------------------------
# In plain eager mode the custom-op machinery (dispatch through the registered op, its autograd
# wrapper, the autocast kernels, a second op for the backward) costs about 0.2 ms of host time per
# forward and 0.6 ms per backward (measured on a tiny input), which exceeds the whole layer's GPU
# time at ResNet sizes. Where nothing needs that machinery (no torch.compile / export / tracing, no
# autocast, no tensor subclass or dispatch/function mode, no functorch transform) the same Rust
# forward and backward run from a plain autograd.Function; the Rust core validates every argument.
_PLAIN_TYPES = (Tensor, torch.nn.Parameter)
_FAST_PATH = os.environ.get("IC_NETWORKS_FAST_PATH", "1") != "0"


def _fast_path_ok(x: Tensor, *params: Optional[Tensor]) -> bool:
    if not _FAST_PATH or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    dev = x.device.type
    if dev not in ("cpu", "cuda") or torch.is_autocast_enabled(dev):
        return False
    if torch._C._len_torch_function_stack() or _get_current_dispatch_mode() is not None:
        return False
    for t in (x, *params):
        if t is not None and (type(t) not in _PLAIN_TYPES or _functorch_wrapped(t)):
            return False
    return True


_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


class _IcConv2dFunction(torch.autograd.Function):
    """``ic_conv2d_forward`` / ``ic_conv2d_backward`` without the op dispatcher (eager only)."""

    @staticmethod
    def forward(ctx, x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups):
        out, relu_z = _core.ic_conv2d_forward(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups)
        ctx.save_for_backward(x, weight, adjust_weight, adjust_bias, alpha, relu_z)
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        n = ctx.needs_input_grad
        needs = [bool(n[0]), bool(n[1]), bool(n[2]), bool(n[3]), bool(n[4]), bool(n[5])]
        x, weight, adjust_weight, adjust_bias, alpha, relu_z = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        grads = list(_core.ic_conv2d_backward(
            grad_out, x, weight, adjust_weight, adjust_bias, alpha, relu_z, ctx.has_bias, stride, padding, dilation, groups, needs
        ))
        if grads[4] is not None:
            grads[4] = grads[4].to(alpha.device)  # d alpha is computed on x's device; alpha may be a CPU scalar
        if not ctx.has_bias:
            grads[5] = None
        return (*grads, None, None, None, None)


def _ic_conv2d_call(x, weight, adjust_weight, adjust_bias, alpha, bias, stride: List[int], padding: List[int], dilation: List[int], groups: int) -> Tensor:
    """The IC convolution on explicit geometry: the eager fast path where it applies, else the op."""
    if _fast_path_ok(x, weight, adjust_weight, adjust_bias, alpha, bias):
        if x.dim() == 4 and weight.dim() == 4 and min(stride) > 0:
            n, cin, h, w = x.shape
            cout, kh, kw = weight.shape[0], weight.shape[2], weight.shape[3]
            ho = conv_out_size(h, kh, stride[0], padding[0], dilation[0])
            wo = conv_out_size(w, kw, stride[1], padding[1], dilation[1])
            need = (x.numel() + weight.numel() + n * max(ho, 0) * max(wo, 0) * (2 * cout + cin)) * x.element_size()
            _check_memory("ic_conv2d", x.device, (n, cout, ho, wo), need)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, adjust_weight, adjust_bias, alpha, bias)):
            return _IcConv2dFunction.apply(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups)
        # Nothing to differentiate: the output alone (relu_z is not even written on the fused path).
        return _core.ic_conv2d_forward(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups, False)[0]
    return torch.ops.ic_networks.ic_conv2d(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups)


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
    A channels_last ``x`` gives a channels_last output and input gradient.

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
    stride_, dilation_ = bounded_pair("stride", stride, 1), bounded_pair("dilation", dilation, 1)
    if weight.dim() != 4:
        raise ValueError(f"weight: expected a 4-D (Cout, Cin/groups, kh, kw) tensor, got shape {tuple(weight.shape)}")
    if x.dim() not in (3, 4):
        raise ValueError(f"x: expected a 3-D (C, H, W) or 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    padding_, extra = resolve_padding(padding, weight.shape[2:], dilation_, stride_)
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    if any(extra):
        x = F.pad(x, extra)
    out = _ic_conv2d_call(x, weight, adjust_weight, adjust_bias, alpha, bias, list(stride_), list(padding_), list(dilation_), groups)
    return out.squeeze(0) if unbatched else out


# --------------------------------------------------------------------------------------------------
# Box sum
# --------------------------------------------------------------------------------------------------
def _check_boxsum_args(x, kernel_size, stride, padding, dilation):
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"x: expected a floating-point tensor (float16/bfloat16/float32/float64), got {x.dtype}")
    if min(x.shape[1:]) == 0:
        raise ValueError(f"x: expected channels and a non-empty image (C, H, W >= 1), got shape {tuple(x.shape)}")
    (kh, kw), (stride, padding, dilation) = bounded_pair("kernel_size", kernel_size, 1), _geometry(stride, padding, dilation)
    ho, wo = (conv_out_size(x.shape[2 + i], (kh, kw)[i], stride[i], padding[i], dilation[i]) for i in range(2))
    if ho < 1 or wo < 1:
        raise ValueError(f"x: spatial size {tuple(x.shape[2:])} with padding {padding} is smaller than the dilated kernel")
    return kh, kw, stride, padding, dilation, ho, wo


@torch.library.custom_op("ic_networks::boxsum", mutates_args=())
def _boxsum(x: Tensor, kernel_size: List[int], stride: List[int], padding: List[int], dilation: List[int]) -> Tensor:
    kh, kw, stride, padding, dilation, ho, wo = _check_boxsum_args(x, kernel_size, stride, padding, dilation)
    shape = (x.shape[0], x.shape[1], ho, wo)
    _check_memory("boxsum", x.device, shape, (x.numel() + shape[0] * shape[1] * ho * wo) * x.element_size())
    return _core.boxsum(x, [kh, kw], stride, padding, dilation)


@_boxsum.register_fake
def _boxsum_fake(x, kernel_size, stride, padding, dilation):
    kh, kw, stride, padding, dilation, _, _ = _check_boxsum_args(x, kernel_size, stride, padding, dilation)
    return _boxsum_meta(x, kh, kw, stride, padding, dilation)


def _boxsum_setup(ctx, inputs, output):
    x = inputs[0]
    ctx.save_for_backward(x)
    ctx.geometry = _check_boxsum_args(*inputs)[:5]


def _boxsum_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    kh, kw, stride, padding, dilation = ctx.geometry
    c = x.shape[1]
    # The adjoint of a depthwise all-ones convolution: its input gradient (plain aten, differentiable).
    ones = torch.ones(c, 1, kh, kw, dtype=grad.dtype, device=grad.device)
    dx = torch.ops.aten.convolution_backward(grad, x, ones, None, stride, padding, dilation, False, [0, 0], c, [True, False, False])[0]
    return dx, None, None, None, None


_boxsum.register_autograd(_boxsum_backward, setup_context=_boxsum_setup)


def boxsum(x: Tensor, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1) -> Tensor:
    """Per-channel sum over every kh x kw window (zero padding), on a conv's output grid (Rust).

    ``x`` (N, C, H, W) -> (N, C, Ho, Wo). Differentiable in ``x`` (the adjoint is the transposed box
    sum); a custom op (``torch.ops.ic_networks.boxsum``) that ``torch.compile`` traces.
    """
    _check_tensor("x", x)
    return torch.ops.ic_networks.boxsum(x, bounded_pair("kernel_size", kernel_size, 1), *_geometry(stride, padding, dilation))


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
