"""The IC layer composed in Python from the raw fused CUDA kernels (``ic_networks._core.cuda_fused_*``)
and libtorch's convolutions, as src/cuda/fused/mod.rs documents the composition. The op itself
takes that route behind ``IC_NETWORKS_CUDA_KERNELS=1`` (src/cuda/fused/layer.rs); this independent
copy lets tests/test_cuda_fused_gpu.py (GPU only) check each kernel on its own. The CPU emulation
in tests/cuda_emu/host.py composes the same way.

Also the public op and IcConv2d run on either route and counted (`op_on_route`,
`module_on_both_routes`), shared by the GPU suite and the emulated-driver test.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ic_networks import _core


def _stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def _pairs(v):
    return [int(v), int(v)] if isinstance(v, int) else [int(a) for a in v]


def fused_forward(x, w, wa, b1, b2, alpha, stride, padding, dilation, groups, keep_relu_z=True):
    """(out, relu_z, saved) with the fused kernels; raises if they decline."""
    st, pd, dl = _pairs(stride), _pairs(padding), _pairs(dilation)
    k = list(w.shape[2:])
    y = F.conv2d(x, w, b2, st, pd, dl, groups)
    shift = b1 - b2 if b2 is not None else b1
    if st == [1, 1]:
        q = F.conv2d(x, wa, None, 1, 0, 1, groups)
        r = _core.cuda_fused_box_forward(y, q, shift, alpha, k, pd, dl, keep_relu_z, _stream())
    else:
        s = _core.cuda_fused_boxsum(x, k, st, pd, dl, _stream())
        assert s is not None, "fused boxsum declined"
        p = F.conv2d(s, wa, None, 1, 0, 1, groups)
        r = _core.cuda_fused_collision_forward(y, p, shift, alpha, keep_relu_z, _stream())
    assert r is not None, "fused forward declined"
    return r


def fused_backward(grad, x, w, wa, alpha, relu_z, stride, padding, dilation, groups):
    """(dx, dw, dwa, db1, dalpha, db2) with the fused kernels."""
    st, pd, dl = _pairs(stride), _pairs(padding), _pairs(dilation)
    k = list(w.shape[2:])
    grad = grad.contiguous(memory_format=torch.channels_last) if _is_cl(relu_z) else grad.contiguous()
    if st == [1, 1]:
        r = _core.cuda_fused_box_backward(grad, relu_z, alpha, list(x.shape[2:]), k, pd, dl, True, _stream())
        assert r is not None, "fused backward declined"
        gy, G, db1, db2, da = r
        dx = torch.nn.grad.conv2d_input(x.shape, w, gy, st, pd, dl, groups)
        dx -= torch.nn.grad.conv2d_input(x.shape, wa, G, 1, 0, 1, groups)
        dwa = -torch.nn.grad.conv2d_weight(x, wa.shape, G, 1, 0, 1, groups)
    else:
        r = _core.cuda_fused_collision_backward(grad, relu_z, alpha, True, _stream())
        assert r is not None, "fused backward declined"
        gy, gz, db1, db2, da = r
        s = _core.cuda_fused_boxsum(x, k, st, pd, dl, _stream())
        dx = torch.nn.grad.conv2d_input(x.shape, w, gy, st, pd, dl, groups)
        ds = torch.nn.grad.conv2d_input(s.shape, wa, gz, 1, 0, 1, groups)
        if _is_cl(x):
            dx = dx.contiguous(memory_format=torch.channels_last)
        else:
            dx = dx.contiguous()
        assert _core.cuda_fused_boxsum_t_(dx, ds, k, st, pd, dl, "sub", _stream())
        dwa = -torch.nn.grad.conv2d_weight(s, wa.shape, gz, 1, 0, 1, groups)
    dw = torch.nn.grad.conv2d_weight(x, w.shape, gy, st, pd, dl, groups)
    return dx, dw, dwa, db1.to(w.dtype), da.to(alpha.dtype).reshape(alpha.shape), db2.to(w.dtype)


def _is_cl(t: Tensor) -> bool:
    return t.dim() == 4 and t.shape[1] > 1 and t.stride(1) == 1


class FusedIcConv(torch.autograd.Function):
    """Autograd wrapper of the fused composition (for gradcheck and the benchmark)."""

    @staticmethod
    def forward(ctx, x, w, wa, b1, alpha, b2, stride, padding, dilation, groups):
        out, relu_z = fused_forward(x, w, wa, b1, b2, alpha, stride, padding, dilation, groups)
        ctx.save_for_backward(x, w, wa, alpha, relu_z)
        ctx.geom = (stride, padding, dilation, groups)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w, wa, alpha, relu_z = ctx.saved_tensors
        dx, dw, dwa, db1, da, db2 = fused_backward(grad, x, w, wa, alpha, relu_z, *ctx.geom)
        return dx, dw, dwa, db1, da, db2, None, None, None, None


def fused_ic_conv2d(x, w, wa, b1, alpha, b2: Tensor | None, stride=1, padding=0, dilation=1, groups=1):
    if b2 is None:
        b2 = torch.zeros_like(b1)
    return FusedIcConv.apply(x, w, wa, b1, alpha, b2, stride, padding, dilation, groups)


# --------------------------------------------------------------------------- the op on either route


def op_on_route(t, stride, padding, dilation, groups, grad, fused, wants=(True,) * 6):
    """The public op (functional.ic_conv2d: autograd, the C++ op library, Backend::Cuda) on the
    fused route (``fused``) or the libtorch route, over fresh leaves of ``t`` = (x, w, wa, b1,
    alpha, b2) that require grad as ``wants`` says, backward from ``grad``: (out, grads, fused
    steps taken)."""
    from ic_networks import cuda_kernels
    from ic_networks.functional import ic_conv2d

    leaves = [v.detach().clone().requires_grad_(on) for v, on in zip(t, wants)]
    with cuda_kernels.enabled_route(fused):
        before = cuda_kernels.calls()
        out = ic_conv2d(*leaves[:5], leaves[5], stride, padding, dilation, groups)
        out.backward(grad)
        if out.is_cuda:
            torch.cuda.synchronize()
        steps = cuda_kernels.calls() - before
    return out.detach(), [v.grad for v in leaves], steps


def module_on_both_routes(m, x, device_type, dtype):
    """``m(x)`` under ``torch.autocast(device_type, dtype)``, then the backward of mean(out^2), on
    the fused route and on the libtorch route: ``{fused: (out dtype, out as float32, the
    parameters' grads, fused steps taken)}``."""
    from ic_networks import cuda_kernels

    res = {}
    for on in (True, False):
        m.zero_grad(set_to_none=True)
        with cuda_kernels.enabled_route(on):
            before = cuda_kernels.calls()
            with torch.autocast(device_type, dtype=dtype):
                out = m(x)
            out.float().square().mean().backward()
            if out.is_cuda:
                torch.cuda.synchronize()
            res[on] = (
                out.dtype,
                out.float().detach(),
                [p.grad.float().clone() for p in m.parameters()],
                cuda_kernels.calls() - before,
            )
    return res
