"""channels_last layouts follow conv2d without activation copies, and concurrent threads give the
sequential results with the GIL released."""

import threading
import time

import pytest
import torch
from torch import nn

import ic_networks as icn
from conftest import DEVICES
from helpers import LAYOUTS

OPS = torch.ops.ic_networks
CL = torch.channels_last


# --------------------------------------------------------------------------------------------------
# channels_last
# --------------------------------------------------------------------------------------------------
COPIES = {"aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("x_fmt,w_fmt", LAYOUTS)
def test_channels_last_layouts_follow_conv2d(device, x_fmt, w_fmt):
    fmt = {"nchw": torch.contiguous_format, "nhwc": CL}
    torch.manual_seed(0)
    m = icn.IcConv2d(8, 16, 3, padding=1, alpha=0.5).to(device, memory_format=fmt[w_fmt])
    conv = nn.Conv2d(8, 16, 3, padding=1).to(device, memory_format=fmt[w_fmt])
    x = torch.randn(2, 8, 12, 12, device=device).contiguous(memory_format=fmt[x_fmt])
    for layer in (m, conv):
        layer.requires_grad_(False)
    xs = [x.clone(memory_format=torch.preserve_format).requires_grad_() for _ in range(2)]
    out, ref = m(xs[0]), conv(xs[1])
    assert out.stride() == ref.stride()
    go = torch.randn_like(out)
    out.backward(go)
    ref.backward(go)
    assert xs[0].grad.stride() == xs[1].grad.stride()
    if x_fmt == "nhwc":
        assert out.is_contiguous(memory_format=CL) and xs[0].grad.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_hot_path_has_no_activation_copies(device):
    """Forward + backward on channels_last input, through the registered ops, copy nothing larger
    than a parameter."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    m = icn.IcConv2d(8, 16, 3, padding=1, alpha=0.5, alpha_mode="learnable").to(device)
    x = torch.randn(4, 8, 16, 16, device=device).contiguous(memory_format=CL).requires_grad_()
    m(x).sum().backward()  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        out = m(x)
        out.backward(torch.ones_like(out))
    names = {e.name for e in prof.events()}
    assert "ic_networks::ic_conv2d_forward" in names and "ic_networks::ic_conv2d_backward" in names
    largest_param = max(p.numel() for p in m.parameters())
    copies = [
        (e.name, e.input_shapes[0]) for e in prof.events() if e.name in COPIES and e.input_shapes and e.input_shapes[0]
    ]
    big = [(n, s) for n, s in copies if torch.Size(s).numel() > largest_param]
    assert not big, big


@pytest.mark.parametrize("x_fmt", ["nchw", "nhwc"])
@pytest.mark.parametrize("stride", [1, 2])
def test_expanded_gradient_takes_the_cpu_kernels(x_fmt, stride):
    """`out.sum().backward()` hands the op an expanded (not dense) gradient: the backward still runs
    on the Rust CPU kernels (no backend declines it for its layout), with a dense one's gradients."""

    def not_dense():
        return sum(n for why, n in icn._core.backend_declines().items() if "not dense" in why)

    torch.manual_seed(0)
    m = icn.IcConv2d(8, 8, 3, stride=stride, padding=1, alpha=0.5, alpha_mode="learnable")
    x = torch.randn(2, 8, 10, 10)
    if x_fmt == "nhwc":
        x = x.contiguous(memory_format=CL)
    grads = []
    for expanded in (False, True):
        xi = x.clone().requires_grad_()
        m.zero_grad()
        out = m(xi)
        before = not_dense()
        if expanded:
            out.sum().backward()
        else:
            out.backward(torch.ones_like(out))
        assert not_dense() == before, icn._core.backend_declines()
        grads.append([xi.grad] + [p.grad.clone() for p in m.parameters()])
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want)


# --------------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_threads_give_sequential_results(device):
    torch.manual_seed(0)
    m = icn.IcConv2d(4, 8, 3, padding=1, alpha=0.5, alpha_mode="learnable").double().to(device)
    inputs = [[torch.randn(2, 4, 9, 9, dtype=torch.float64, device=device) for _ in range(20)] for _ in range(4)]
    if device == "cpu":
        inputs[1] = [x.contiguous(memory_format=CL) for x in inputs[1]]  # the NHWC fused kernels too

    def run(xs):
        res = []
        for x in xs:
            x = x.clone().requires_grad_()
            out = m(x)
            gx, gw, ga = torch.autograd.grad(out.square().sum(), (x, m.weight, m.alpha))
            res.append((out.detach(), gx, gw, ga))
        return res

    sequential = [run(xs) for xs in inputs]
    results, errors = [None] * 4, []

    def worker(i):
        try:
            results[i] = run(inputs[i])
        except BaseException as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for got, want in zip(results, sequential):
        for a, b in zip(got, want):
            for u, v in zip(a, b):
                torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


def test_rust_op_releases_the_gil():
    """A Python thread keeps running while another thread is inside the Rust forward.

    Were the GIL held, this thread would stand still for every call: the stalls longer than half a
    call would add up to (almost) the whole time. With it released the thread runs all along; the
    OS may still preempt it now and then (two cores, libtorch's threads busy), which a test of the
    longest single stall would mistake for a held GIL, so the stalls are summed."""
    x = torch.randn(8, 32, 96, 96)
    w, wa, b1, a = torch.randn(32, 32, 5, 5), torch.randn(32, 32, 1, 1), torch.randn(32), torch.tensor(0.5)
    icn.ic_conv2d(x, w, wa, b1, a, padding=2)  # warm-up
    t0 = time.perf_counter()
    icn.ic_conv2d(x, w, wa, b1, a, padding=2)
    op_time = time.perf_counter() - t0
    done = threading.Event()

    def work():
        for _ in range(3):
            icn.ic_conv2d(x, w, wa, b1, a, padding=2)
        done.set()

    th = threading.Thread(target=work)
    gaps, last = [], time.perf_counter()
    th.start()
    while not done.is_set():
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    th.join()
    total = sum(gaps)
    stalled = sum(g for g in gaps if g > 0.5 * op_time)
    assert total > 2 * op_time and stalled < 0.5 * total, (stalled, total, op_time)


# --------------------------------------------------------------------------------------------------
# the kernels' AVX2 copies (cpu/simd.rs) against the baseline code
# --------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not icn._core.cpu_simd_available(), reason="this CPU has no AVX2 + FMA")
@pytest.mark.parametrize("fmt", ["nchw", "nhwc"])
@pytest.mark.parametrize("stride,hw", [(1, (7, 7)), (1, (30, 20)), (2, (13, 12)), (2, (9, 40))])
def test_avx2_kernels_give_the_baseline_bits(fmt, stride, hw):
    torch.manual_seed(0)
    m = icn.IcConv2d(16, 16, 3, padding=1, stride=stride, alpha=0.7, alpha_mode="learnable")
    x = torch.randn(3, 16, *hw)
    if fmt == "nhwc":
        m, x = m.to(memory_format=CL), x.contiguous(memory_format=CL)

    def run():
        xr = x.detach().clone().requires_grad_(True)
        out = m(xr)
        grads = torch.autograd.grad(out, [xr, *m.parameters()], torch.ones_like(out).mul_(0.5).add_(out.detach()))
        with torch.no_grad():
            infer = m.eval()(x)
        m.train()
        return [out.detach(), infer, *grads]

    old = icn._core.set_cpu_simd(False)
    try:
        base = run()
        icn._core.set_cpu_simd(True)
        avx2 = run()
    finally:
        icn._core.set_cpu_simd(old)
    for a, b in zip(avx2, base):
        assert torch.equal(a, b)
