"""The native op library: its ops registered, opcheck, the fake kernels against the real ones (shapes,
strides, errors), eager calls through the registered ops."""

import pytest
import torch
from torch._prims_common import check_significant_strides
from torch._subclasses.fake_tensor import FakeTensorMode

import ic_networks as icn
from conftest import DEVICES
from helpers import LAYOUTS, ic_op_events, make_case

OPS = torch.ops.ic_networks
CL = torch.channels_last


# --------------------------------------------------------------------------------------------------
# opcheck and fake kernels
# --------------------------------------------------------------------------------------------------
def _backward_args(
    x,
    w,
    wa,
    b1,
    a,
    b2,
    stride=(1, 1),
    padding=(1, 1),
    dilation=(1, 1),
    groups=2,
    needs=(True,) * 6,
    grad_format=torch.contiguous_format,
):
    out, relu_z = OPS.ic_conv2d_forward(x, w, wa, b1, a, b2, list(stride), list(padding), list(dilation), groups)
    grad = torch.randn(out.shape, dtype=out.dtype, device=out.device).contiguous(memory_format=grad_format)
    return (
        grad,
        x,
        w,
        wa,
        b1,
        a,
        relu_z,
        b2 is not None,
        list(stride),
        list(padding),
        list(dilation),
        groups,
        list(needs),
    )


def test_opcheck_every_op():
    x, w, wa, b1, a, b2 = make_case(3, 2, cout=6, hw=(7, 6))
    leaves = [t.requires_grad_() for t in (x, w, wa, b1, a, b2)]
    torch.library.opcheck(OPS.ic_conv2d_forward.default, (*leaves, [2, 1], [1, 0], [1, 2], 2))
    with torch.no_grad():  # the inference forward has no backward: plain tensors
        torch.library.opcheck(
            OPS.ic_conv2d_inference.default, (*(t.detach() for t in leaves), [2, 1], [1, 0], [1, 2], 2)
        )
    with torch.no_grad():  # plain tensors: the backward op has no double backward
        bargs = _backward_args(
            *(t.detach() for t in (x, w, wa, b1, a)), None, needs=(True, False, True, True, True, False)
        )
    torch.library.opcheck(OPS.ic_conv2d_backward.default, bargs)
    torch.library.opcheck(OPS.boxsum.default, (x, [3, 2], [2, 1], [1, 0], [1, 2]))
    s = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    t, y = torch.randn(5, 7, dtype=torch.float64), torch.randint(0, 7, (5,))
    torch.library.opcheck(OPS.wld_loss.default, (s, t, y, 0.5, 0.005, 4.0))
    torch.library.opcheck(
        OPS.wld_loss_backward.default, (torch.tensor(1.0, dtype=torch.float64), s.detach(), t, y, 0.5, 0.005, 4.0)
    )


def test_boxsum_op_is_differentiable():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    for k, st, p, d in [((3, 3), 1, 1, 1), ((3, 2), (2, 1), (1, 0), (1, 2)), ((2, 2), 1, 3, 1)]:
        f = lambda t: icn.functional.boxsum(t, k, st, p, d)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x,), fast_mode=True)
        assert torch.autograd.gradgradcheck(f, (x,), fast_mode=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("x_fmt,w_fmt", LAYOUTS)
def test_fake_matches_real_for_layouts(device, dtype, x_fmt, w_fmt):
    """The fake kernels predict the real outputs' strides (what torch.compile relies on)."""
    fmt = {"nchw": torch.contiguous_format, "nhwc": CL}
    x, w, wa, b1, a, b2 = make_case(3, 1, cout=6, hw=(6, 6), dtype=dtype, device=device)
    x, w = x.contiguous(memory_format=fmt[x_fmt]), w.contiguous(memory_format=fmt[w_fmt])
    fwd = (x, w, wa, b1, a, b2, [1, 1], [1, 1], [1, 1], 1)
    checks = [
        (OPS.ic_conv2d_forward.default, fwd),
        (OPS.ic_conv2d_inference.default, fwd),
        (OPS.boxsum.default, (x, [3, 3], [1, 1], [1, 1], [1, 1])),
    ]
    for gf in (torch.contiguous_format, CL):
        checks.append((OPS.ic_conv2d_backward.default, _backward_args(x, w, wa, b1, a, b2, groups=1, grad_format=gf)))
    checks.append((OPS.ic_conv2d_forward.default, (x[:0], w, wa, b1, a, b2, [1, 1], [1, 1], [1, 1], 1)))
    checks.append((OPS.ic_conv2d_backward.default, _backward_args(x[:0], w, wa, b1, a, b2, groups=1)))
    for op, args in checks:
        real = op(*args)
        with FakeTensorMode() as mode:
            fake = op(*[mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in args])
        for r, f in zip(real if isinstance(real, tuple) else (real,), fake if isinstance(fake, tuple) else (fake,)):
            assert (r.shape, r.dtype, r.device) == (f.shape, f.dtype, f.device), op
            assert check_significant_strides(r, f)[0], (op, r.stride(), f.stride())


def test_fake_raises_the_same_clear_errors_under_compile():
    m = torch.compile(icn.IcConv2d(4, 6, 3), backend="aot_eager", fullgraph=True)
    # dynamo re-raises them as a RuntimeError (TorchRuntimeError) that quotes our ValueError
    with pytest.raises(RuntimeError, match="ValueError.*x: has 5 channels but weight"):
        m(torch.randn(1, 5, 8, 8))
    with pytest.raises(RuntimeError, match="ValueError.*smaller than the dilated kernel"):
        m(torch.randn(1, 4, 2, 2))


# --------------------------------------------------------------------------------------------------
# The registered ops
# --------------------------------------------------------------------------------------------------
OP_NAMES = ["ic_conv2d_forward", "ic_conv2d_inference", "ic_conv2d_backward", "boxsum", "wld_loss", "wld_loss_backward"]


def test_ops_are_registered_by_the_native_library():
    """Every op is defined in C++ with a kernel per dispatch key (no Python kernel but the fake)."""
    for name in OP_NAMES + ["ic_conv2d"]:
        op = getattr(OPS, name).default
        assert not op._defined_in_python, name
        assert "ops.cpp" in op._handle.debug(), (name, op._handle.debug())
    for name in OP_NAMES:
        for key in ("CPU", "CUDA", "Autograd"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ic_networks::{name}", key), (name, key)
    for name in ("ic_conv2d_forward", "ic_conv2d_inference"):
        for key in ("AutocastCPU", "AutocastCUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ic_networks::{name}", key), (name, key)
    assert torch._C._dispatch_has_kernel_for_dispatch_key("ic_networks::ic_conv2d", "CompositeImplicitAutograd")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["nchw", "nhwc"])
def test_eager_calls_take_the_registered_ops(device, fmt):
    """Training calls run ic_conv2d -> ic_conv2d_forward / ic_conv2d_backward; no_grad calls run
    ic_conv2d_inference (which writes no relu_z), with the training forward's output bit for bit."""
    torch.manual_seed(0)
    m = icn.IcConv2d(8, 12, 3, stride=2, padding=1, groups=2, alpha=0.3, alpha_mode="learnable").to(device)
    x = torch.randn(3, 8, 11, 9, device=device).contiguous(memory_format=fmt).requires_grad_()
    events = ic_op_events(lambda: m(x).square().sum().backward())
    assert {"ic_networks::ic_conv2d", "ic_networks::ic_conv2d_forward", "ic_networks::ic_conv2d_backward"} <= events, (
        events
    )
    assert "ic_networks::ic_conv2d_inference" not in events
    with torch.no_grad():
        events = ic_op_events(lambda: m(x))
        infer = m(x)
    assert "ic_networks::ic_conv2d_inference" in events and "ic_networks::ic_conv2d_forward" not in events, events
    train = m(x)
    assert torch.equal(train.detach(), infer) and train.stride() == infer.stride()


def test_inference_op_and_double_backward_refuse_clearly():
    x, w, wa, b1, a, b2 = make_case(3, 2, cout=6, hw=(7, 6))
    x.requires_grad_()
    out = OPS.ic_conv2d_inference(x, w, wa, b1, a, b2, [1, 1], [1, 1], [1, 1], 2)
    with pytest.raises(RuntimeError, match="ic_conv2d_inference keeps nothing for a backward"):
        out.sum().backward()
    out = icn.functional.ic_conv2d(x, w, wa, b1, a, b2, 1, 1, 1, 2)
    (gx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


def test_autocast_and_fake_mode_go_through_the_op():
    m = icn.IcConv2d(4, 4, 3, padding=1)
    x = torch.randn(2, 4, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        events = ic_op_events(lambda: m(x))
    assert "ic_networks::ic_conv2d_forward" in events, events
    params = [m.weight.detach(), m.adjust_weight.detach(), m.adjust_bias.detach(), m.alpha.detach()]
    mode = FakeTensorMode()
    fx, *fparams = [mode.from_tensor(t) for t in (x, *params)]
    with mode:
        out = icn.functional.ic_conv2d(fx, *fparams, padding=1)
    assert out.shape == (2, 4, 6, 6)


def test_eager_errors_name_the_argument():
    """Bad input gets the core's clear exceptions, not a panic."""
    m = icn.IcConv2d(4, 4, 3, padding=1)
    with pytest.raises(TypeError, match="dtype"):
        m(torch.randn(1, 4, 5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="x: has 3 channels"):
        m(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        icn.functional.ic_conv2d(torch.randn(1, 4, 2, 2), m.weight, m.adjust_weight, m.adjust_bias, m.alpha)
    with pytest.raises(TypeError, match="x"):
        m([[1.0]])
