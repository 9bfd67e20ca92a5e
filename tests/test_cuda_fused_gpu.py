"""The fused CUDA kernels on a real GPU (skipped without one; run by scripts/gpu_check.sh).

Parity with the float64 oracle and with the libtorch CUDA path, gradcheck in float64,
float16/bfloat16, channels_last, a non-default stream, CUDA-graph capture after warm-up, and
run-to-run determinism of the reductions: first for each kernel through the Python composition
(tests/cuda_fused_compose.py), then for the op itself with the switch on (``test_op_*``), which is
what users run.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn.functional as F

from ic_networks import _core
from ic_networks.cuda_kernels import enabled_route as fused_route
from ic_networks.functional import ic_conv2d
from ic_networks.nn import IcConv2d
from ic_networks.reference import ic_conv2d_reference

sys.path.insert(0, os.path.dirname(__file__))
from cuda_emu.host import make_case  # noqa: E402
from cuda_fused_compose import fused_backward, fused_forward, fused_ic_conv2d, module_on_both_routes, op_on_route  # noqa: E402

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module", autouse=True)
def gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if not _core.cuda_fused_available():
        pytest.fail(f"a GPU is present but the fused kernels are unavailable: {_core.cuda_fused_unavailable_reason()}")
    # deterministic cuDNN, so that gradcheck's reentrancy check and the equality checks below see
    # only the fused kernels' own (deterministic) behaviour
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    # plain float32 convs and GEMMs: TF32 would make float32 parity between two routes a 1e-3 affair
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    info = _core.cuda_fused_warm_up(torch.cuda.current_device())
    print("warm-up:", info)
    return info


def case(n, c, cout, hw, k, groups, dtype, cl, seed=0, device="cuda"):
    """The emulation tests' case (x, W, W', b1, b2, alpha) on `device`."""
    return [v.to(device) for v in make_case(n, c, cout, hw, k, None, None, None, groups, dtype, cl, seed)]


def oracle(x, w, wa, b1, b2, alpha, st, pd, dl, groups, grad):
    leaves = [t.detach().double().requires_grad_() for t in (x, w, wa, b1, alpha, b2)]
    out = ic_conv2d_reference(*leaves[:5], leaves[5], st, pd, dl, groups)
    gs = torch.autograd.grad(out, leaves, grad.double())
    return out.detach(), gs


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / (b.abs().max() + 1e-12)).item()


GEOMS = [  # (k, stride, padding, dilation)
    ((3, 3), 1, 1, 1),
    ((5, 5), 1, 2, 1),
    ((3, 3), 1, 2, 2),
    ((1, 1), 1, 0, 1),
    ((3, 5), 1, 0, 1),
    ((3, 3), 2, 1, 1),
    ((5, 5), 2, 2, 1),
    ((1, 1), 2, 0, 1),
    ((3, 3), 2, 0, 2),
]


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("geom", GEOMS, ids=lambda g: f"k{g[0][0]}x{g[0][1]}s{g[1]}p{g[2]}d{g[3]}")
@pytest.mark.parametrize(
    "shape", [(2, 8, 8, (13, 11), 1), (3, 17, 17, (9, 9), 1), (2, 16, 16, (20, 20), 2), (1, 64, 64, (28, 28), 1)]
)
def test_parity_float64_vs_oracle(geom, shape, cl):
    k, s, p, d = geom
    n, c, cout, hw, groups = shape
    x, w, wa, b1, b2, alpha = case(n, c, cout, hw, k, groups, torch.float64, cl)
    st, pd, dl = [s, s], [p, p], [d, d]
    out, rz = fused_forward(x, w, wa, b1, b2, alpha, st, pd, dl, groups)
    grad = torch.randn_like(out)
    ref_out, ref_g = oracle(x, w, wa, b1, b2, alpha, st, pd, dl, groups, grad)
    assert rel(out, ref_out) < 1e-12
    g = fused_backward(grad, x, w, wa, alpha, rz, st, pd, dl, groups)
    for name, a, b in zip(["x", "w", "w'", "b1", "alpha", "b2"], g, ref_g):
        assert rel(a.reshape(b.shape), b) < 1e-11, name


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("geom", GEOMS, ids=lambda g: f"k{g[0][0]}x{g[0][1]}s{g[1]}p{g[2]}d{g[3]}")
def test_parity_float32_vs_libtorch_path(geom, cl):
    """The fused composition against today's CUDA op (the libtorch path, the default)."""
    k, s, p, d = geom
    x, w, wa, b1, b2, alpha = case(4, 32, 32, (16, 16), k, 1, torch.float32, cl, seed=1)
    st, pd, dl = [s, s], [p, p], [d, d]
    lt_out, lt_rz = _core.ic_conv2d_forward(x, w, wa, b1, alpha, b2, st, pd, dl, 1)
    out, rz = fused_forward(x, w, wa, b1, b2, alpha, st, pd, dl, 1)
    assert rel(out, lt_out) < 1e-5
    grad = torch.randn_like(out)
    lt = _core.ic_conv2d_backward(grad, x, w, wa, b1, alpha, lt_rz, True, st, pd, dl, 1, [True] * 6)
    fu = fused_backward(grad, x, w, wa, alpha, rz, st, pd, dl, 1)
    for name, a, b in zip(["x", "w", "w'", "b1", "alpha", "b2"], fu, lt):
        assert rel(a.reshape(b.shape), b) < 1e-4, name


@pytest.mark.parametrize("stride,cl", [(1, False), (1, True), (2, False), (2, True)])
def test_gradcheck_float64(stride, cl):
    x, w, wa, b1, b2, alpha = case(2, 3, 4, (7, 6), (3, 3), 1, torch.float64, cl, seed=2)
    leaves = [t.requires_grad_() for t in (x, w, wa, b1, alpha, b2)]
    f = lambda x, w, wa, b1, a, b2: fused_ic_conv2d(x, w, wa, b1, a, b2, stride, 1, 1, 1)  # noqa: E731
    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("stride", [1, 2])
def test_half_types(dtype, cl, stride):
    x, w, wa, b1, b2, alpha = case(4, 32, 32, (14, 14), (3, 3), 1, dtype, cl, seed=3)
    st = [stride, stride]
    out, rz = fused_forward(x, w, wa, b1, b2, alpha, st, [1, 1], [1, 1], 1)
    assert out.dtype == dtype
    grad = torch.randn_like(out)
    ref_out, ref_g = oracle(x, w, wa, b1, b2, alpha, st, [1, 1], [1, 1], 1, grad)
    tol = 2e-2 if dtype == torch.float16 else 6e-2
    assert rel(out, ref_out) < tol
    g = fused_backward(grad, x, w, wa, alpha, rz, st, [1, 1], [1, 1], 1)
    for name, a, b in zip(["x", "w", "w'", "b1", "alpha", "b2"], g, ref_g):
        assert rel(a.reshape(b.shape), b) < 5 * tol, name
    # the libtorch path on the same half inputs: same ballpark
    lt_out, _ = _core.ic_conv2d_forward(x, w, wa, b1, alpha, b2, st, [1, 1], [1, 1], 1)
    assert rel(out, lt_out) < tol


def test_non_default_stream():
    x, w, wa, b1, b2, alpha = case(4, 32, 32, (28, 28), (3, 3), 1, torch.float32, False, seed=4)
    out0, rz0 = fused_forward(x, w, wa, b1, b2, alpha, [1, 1], [1, 1], [1, 1], 1)
    grad = torch.randn_like(out0)
    g0 = fused_backward(grad, x, w, wa, alpha, rz0, [1, 1], [1, 1], [1, 1], 1)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        assert torch.cuda.current_stream().cuda_stream == s.cuda_stream != 0
        # a long GEMM first, so a launch on the wrong stream would read unfinished inputs
        big = torch.randn(4096, 4096, device="cuda")
        for _ in range(3):
            big = big @ big / 64
        out1, rz1 = fused_forward(x, w, wa, b1, b2, alpha, [1, 1], [1, 1], [1, 1], 1)
        g1 = fused_backward(grad, x, w, wa, alpha, rz1, [1, 1], [1, 1], [1, 1], 1)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    assert torch.equal(out0, out1) and torch.equal(rz0, rz1)
    check_grads(g0, g1)


def check_grads(a, b):
    """(dx, dw, dw', db1, dalpha, db2): the sums are the fused kernels' own (bit-identical); the
    rest also goes through cuDNN/cuBLAS (close)."""
    for i, (u, v) in enumerate(zip(a, b)):
        if i >= 3:
            assert torch.equal(u, v), i
        else:
            assert rel(u, v) < 1e-6, i


def capture_and_replay(step, static_x, new_x):
    """Warms `step` up on a side stream, captures it in a CUDA graph, replays it on `new_x` copied
    into `static_x`; returns (the graph's outputs, an eager run's outputs on the same input)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()
    static_x.copy_(new_x)
    graph.replay()
    torch.cuda.synchronize()
    return static_out, [t.clone() for t in step()]


@pytest.mark.parametrize("stride", [1, 2])
def test_cuda_graph_capture_after_warm_up(stride):
    x, w, wa, b1, b2, alpha = case(4, 32, 32, (28, 28), (3, 3), 1, torch.float32, False, seed=5)
    st = [stride, stride]
    static_x = x.clone()
    grad = torch.randn_like(fused_forward(x, w, wa, b1, b2, alpha, st, [1, 1], [1, 1], 1)[0])

    def ref_step(xx):
        return ic_conv2d_reference(xx, w, wa, b1, alpha, b2, st, [1, 1], [1, 1], 1)

    def step():
        out, rz = fused_forward(static_x, w, wa, b1, b2, alpha, st, [1, 1], [1, 1], 1)
        return (out,) + tuple(fused_backward(grad, static_x, w, wa, alpha, rz, st, [1, 1], [1, 1], 1))

    new_x = torch.randn_like(x)
    static_out, eager = capture_and_replay(step, static_x, new_x)
    assert rel(static_out[0], ref_step(new_x)) < 1e-5, "the replay did not see the new input"
    assert torch.equal(static_out[0], eager[0])
    check_grads(static_out[1:], eager[1:])


def test_backward_is_deterministic():
    x, w, wa, b1, b2, alpha = case(16, 64, 64, (56, 56), (3, 3), 1, torch.float32, True, seed=6)
    out, rz = fused_forward(x, w, wa, b1, b2, alpha, [1, 1], [1, 1], [1, 1], 1)
    grad = torch.randn_like(out)
    r1 = _core.cuda_fused_box_backward(
        grad, rz, alpha, [56, 56], [3, 3], [1, 1], [1, 1], True, torch.cuda.current_stream().cuda_stream
    )
    r2 = _core.cuda_fused_box_backward(
        grad, rz, alpha, [56, 56], [3, 3], [1, 1], [1, 1], True, torch.cuda.current_stream().cuda_stream
    )
    for a, b in zip(r1, r2):
        assert torch.equal(a, b)


def test_inference_skips_relu_z():
    x, w, wa, b1, b2, alpha = case(2, 8, 8, (9, 9), (3, 3), 1, torch.float32, False, seed=7)
    y = F.conv2d(x, w, b2, 1, 1)
    q = F.conv2d(x, wa)
    out, rz = _core.cuda_fused_box_forward(
        y, q, b1 - b2, alpha, [3, 3], [1, 1], [1, 1], False, torch.cuda.current_stream().cuda_stream
    )
    assert rz is None
    ref = ic_conv2d_reference(x, w, wa, b1, alpha, b2, 1, 1, 1, 1)
    assert rel(out, ref) < 1e-5


# --------------------------------------------------------------------------- the op on the fused route


def op_grads(t, st, pd, dl, groups, grad, fused, wants=(True,) * 6):
    """`op_on_route` for a `case()` tuple (x, w, wa, b1, b2, alpha): (out, grads, fused steps)."""
    x, w, wa, b1, b2, alpha = t
    return op_on_route((x, w, wa, b1, alpha, b2), st, pd, dl, groups, grad, fused, wants)


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("geom", GEOMS, ids=lambda g: f"k{g[0][0]}x{g[0][1]}s{g[1]}p{g[2]}d{g[3]}")
@pytest.mark.parametrize("shape", [(2, 8, 8, (13, 11), 1), (2, 16, 16, (20, 20), 2), (2, 8, 12, (10, 10), 1)])
def test_op_float64_vs_oracle(geom, shape, cl):
    """The op with the switch on, incl. the accumulating GEMM for dx and groups > 1; it must take
    the fused route (counted), not fall back silently."""
    k, s, p, d = geom
    n, c, cout, hw, groups = shape
    t = case(n, c, cout, hw, k, groups, torch.float64, cl, seed=8)
    st, pd, dl = [s, s], [p, p], [d, d]
    grad = torch.randn(F.conv2d(t[0], t[1], None, st, pd, dl, groups).shape, device="cuda", dtype=torch.float64)
    out, g, steps = op_grads(t, st, pd, dl, groups, grad, True)
    assert steps == (2 if s == 1 else 3), f"{steps} fused steps: a kernel declined this case"
    ref_out, ref_g = oracle(*t, st, pd, dl, groups, grad)
    assert rel(out, ref_out) < 1e-12
    for name, a, b in zip(["x", "w", "w'", "b1", "alpha", "b2"], g, ref_g):
        assert rel(a.reshape(b.shape), b) < 1e-11, name
    # only some gradients asked for
    _, g2, _ = op_grads(t, st, pd, dl, groups, grad, True, wants=(False, False, True, False, True, False))
    assert g2[0] is None and g2[1] is None and g2[3] is None and g2[5] is None
    assert rel(g2[2], ref_g[2]) < 1e-11 and rel(g2[4].reshape(()), ref_g[4]) < 1e-11


@pytest.mark.parametrize("stride,cl", [(1, False), (1, True), (2, False), (2, True)])
def test_op_gradcheck_float64(stride, cl):
    x, w, wa, b1, b2, alpha = case(2, 3, 4, (7, 6), (3, 3), 1, torch.float64, cl, seed=9)
    leaves = [t.requires_grad_() for t in (x, w, wa, b1, alpha, b2)]
    f = lambda x, w, wa, b1, a, b2: ic_conv2d(x, w, wa, b1, a, b2, stride, 1, 1, 1)  # noqa: E731
    with fused_route(True):
        before = _core.cuda_fused_calls()
        assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)
        assert _core.cuda_fused_calls() > before


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
def test_op_float32_matches_libtorch_route(stride, cl):
    t = case(8, 64, 64, (28, 28), (3, 3), 1, torch.float32, cl, seed=10)
    st = [stride, stride]
    grad = torch.randn(F.conv2d(t[0], t[1], None, st, 1).shape, device="cuda")
    out1, g1, steps = op_grads(t, st, [1, 1], [1, 1], 1, grad, True)
    out0, g0, steps0 = op_grads(t, st, [1, 1], [1, 1], 1, grad, False)
    assert steps > 0 and steps0 == 0
    assert rel(out1, out0) < 1e-5
    for a, b in zip(g1, g0):
        assert rel(a, b) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_op_under_autocast(dtype):
    """IcConv2d under autocast on the fused route vs the libtorch route (the same half-precision
    inputs, so only the kernels differ)."""
    torch.manual_seed(11)
    m = IcConv2d(32, 32, 3, padding=1, alpha=0.5).cuda()
    with torch.no_grad():
        m.adjust_bias.normal_(0, 0.3)
    x = torch.randn(4, 32, 20, 20, device="cuda")
    res = module_on_both_routes(m, x, "cuda", dtype)
    (d1, o1, g1, n1), (d0, o0, g0, n0) = res[True], res[False]
    assert d1 == d0 == dtype and n1 > 0 and n0 == 0
    tol = 6e-2 if dtype == torch.bfloat16 else 2e-2  # as test_half_types
    assert rel(o1, o0) < tol
    for a, b in zip(g1, g0):
        assert rel(a, b) < 10 * tol


def test_op_on_a_non_default_stream():
    """The op takes PyTorch's current stream from the C++ side: on a side stream behind a long
    GEMM it must give what it gives on the default stream."""
    t = case(4, 32, 32, (28, 28), (3, 3), 1, torch.float32, False, seed=12)
    grad = torch.randn(4, 32, 28, 28, device="cuda")
    out0, g0, _ = op_grads(t, [1, 1], [1, 1], [1, 1], 1, grad, True)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        big = torch.randn(4096, 4096, device="cuda")
        for _ in range(3):
            big = big @ big / 64
        xs = t[0] * 1.0  # written on the side stream, right after the GEMMs
        out1, g1, steps = op_grads([xs] + t[1:], [1, 1], [1, 1], [1, 1], 1, grad, True)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    assert steps == 2
    assert torch.equal(out0, out1)
    check_grads(g0, g1)


@pytest.mark.parametrize("stride", [1, 2])
def test_op_cuda_graph_capture_after_warm_up(stride):
    """A whole forward + backward of the op on the fused route captured in a CUDA graph after a
    warm-up (the kernels compile at the first call, never during capture); the replay sees new
    inputs and equals eager."""
    x, w, wa, b1, b2, alpha = case(4, 32, 32, (28, 28), (3, 3), 1, torch.float32, False, seed=13)
    params = [v.requires_grad_() for v in (w, wa, b1, alpha, b2)]
    static_x = x.clone()
    grad = torch.randn_like(F.conv2d(x, w, None, stride, 1))

    def step():
        out = ic_conv2d(static_x, params[0], params[1], params[2], params[3], params[4], stride, 1, 1, 1)
        return (out,) + torch.autograd.grad(out, params, grad)

    new_x = torch.randn_like(x)
    with fused_route(True):
        before = _core.cuda_fused_calls()
        static_out, eager = capture_and_replay(step, static_x, new_x)
        assert _core.cuda_fused_calls() > before
    ref = ic_conv2d_reference(new_x, w, wa, b1, alpha, b2, stride, 1, 1, 1)
    assert rel(static_out[0], ref) < 1e-5, "the replay did not see the new input"
    assert torch.equal(static_out[0], eager[0])
    for u, v in zip(static_out[1:], eager[1:]):
        assert rel(u, v) < 1e-6
