"""The IC convolution op (Rust) against the plain-PyTorch oracle: forward, backward, gradcheck."""

import itertools

import pytest
import torch
import torch.nn.functional as F

import ic_networks as icn
from conftest import DEVICES
from helpers import F64_GRAD_TOL, F64_TOL, GRAD_NAMES, REL_TOL, make_case, oracle, rel_err
from ic_networks.functional import ic_conv2d
from ic_networks.reference import boxsum_reference, ic_conv2d_reference

KERNELS = [(1, 1), (3, 3), (5, 5), (3, 1)]
STRIDES = [1, 2]
PADDINGS = [0, 1, "same"]
DILATIONS = [1, 2]
GROUPS = ["1", "2", "dw"]
BIASES = [True, False]
ALPHAS = [0.0, 0.03, 1.0, "learnable"]


def _make(k, groups, bias, alpha, cin=4, cout=4, **kw):
    """:func:`helpers.make_case` for this file's parameters (``groups`` '1' | '2' | 'dw', ``alpha`` a
    float or 'learnable'); returns the op's tensors and the groups."""
    g = {"1": 1, "2": 2, "dw": cin}[groups]
    alpha = 0.7 if alpha == "learnable" else alpha
    case = make_case(k, g, bias=bias, alpha=alpha, cin=cin, cout=cin if g == cin else cout, **kw)
    return (*case, g)


def _geometry_cases():
    for k, s, p, d in itertools.product(KERNELS, STRIDES, PADDINGS, DILATIONS):
        if p == "same" and s != 1:
            continue
        yield k, s, p, d


GEOMS = list(_geometry_cases())


def _assert_matches_oracle(x, w, wa, b1, a, b2, s, p, d, g, tol=F64_TOL, grad_tol=F64_GRAD_TOL):
    """Forward and every gradient of the Rust op against the float64 oracle; returns the output."""
    leaves = [t.requires_grad_(True) for t in (x, w, wa, b1, a, b2) if t is not None]
    out = ic_conv2d(x, w, wa, b1, a, b2, s, p, d, g)
    go = torch.randn_like(out)
    ref, ref_grads = oracle(x, w, wa, b1, a, b2, s, p, d, g, grad=go)
    assert out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    want = [ref_grads[name] for name, t in zip(GRAD_NAMES, (x, w, wa, b1, a, b2)) if t is not None]
    for gg, ww in zip(torch.autograd.grad(out, leaves, go), want):
        torch.testing.assert_close(gg.double(), ww, rtol=grad_tol, atol=grad_tol)
    return out


@pytest.mark.parametrize("k,s,p,d", GEOMS, ids=[f"k{k[0]}x{k[1]}-s{s}-p{p}-d{d}" for k, s, p, d in GEOMS])
@pytest.mark.parametrize("groups", GROUPS)
@pytest.mark.parametrize("bias", BIASES)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_forward_backward_match_oracle(k, s, p, d, groups, bias, alpha):
    # padding 'same' goes to F.conv2d as is (asymmetric for even dilated kernels), as ic_conv2d handles it
    x, w, wa, b1, a, b2, g = _make(k, groups, bias, alpha)
    _assert_matches_oracle(x, w, wa, b1, a, b2, s, p, d, g)


GRADCHECK_CASES = [
    (k, s, p, d, grp, bias, alpha)
    for i, (k, s, p, d) in enumerate(GEOMS)
    for grp, bias, alpha in [(GROUPS[i % 3], BIASES[i % 2], ALPHAS[i % 4])]
]


@pytest.mark.parametrize("k,s,p,d,groups,bias,alpha", GRADCHECK_CASES)
def test_gradcheck_float64(k, s, p, d, groups, bias, alpha):
    x, w, wa, b1, a, b2, g = _make(k, groups, bias, alpha, n=2, cin=4, cout=4, hw=(10, 9))
    # keep Z away from 0 so finite differences do not straddle the relu's kink
    inputs = [x, w, wa, b1, a] + ([b2] if b2 is not None else [])
    for t in inputs:
        t.requires_grad_(True)

    def f(x, w, wa, b1, a, *rest):
        return ic_conv2d(x, w, wa, b1, a, rest[0] if rest else None, s, p, d, g)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, nondet_tol=0.0)


def test_boxsum_matches_reference_and_identity():
    x = torch.randn(2, 3, 10, 9, dtype=torch.float64)
    for k, s, p, d in [((3, 3), 1, 1, 1), ((3, 3), 2, 0, 1), ((5, 3), 1, 2, 1), ((3, 3), 1, 2, 2), ((1, 1), 1, 1, 1)]:
        torch.testing.assert_close(icn.functional.boxsum(x, k, s, p, d), boxsum_reference(x, k, s, p, d))
    # conv1x1(boxsum(X), W') == conv(X, W' broadcast to kh x kw)
    wa = torch.randn(5, 3, 1, 1, dtype=torch.float64)
    lhs = F.conv2d(icn.functional.boxsum(x, (3, 3), 1, 1, 1), wa)
    rhs = F.conv2d(x, wa.expand(5, 3, 3, 3), None, 1, 1)
    torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["noncontig", "channels_last"])
def test_layouts_match_contiguous(device, layout):
    x, w, wa, b1, a, b2, g = _make((3, 3), "1", True, 0.5, dtype=torch.float64, device=device, hw=(10, 10))
    if layout == "noncontig":
        xx = torch.randn(2, 4, 10, 20, dtype=torch.float64, device=device)[..., ::2]
        xx.copy_(x)
        assert not xx.is_contiguous()
    else:
        xx = x.contiguous(memory_format=torch.channels_last)
    xs = [
        x.clone().requires_grad_(),
        xx.detach().clone().requires_grad_() if layout == "channels_last" else xx.requires_grad_(),
    ]
    outs = []
    for xi in xs:
        params = [t.clone().requires_grad_() for t in (w, wa, b1, a, b2)]
        out = ic_conv2d(xi, *params[:4], params[4], 1, 1, 1, g)
        out.backward(torch.ones_like(out))
        outs.append((out.detach(), xi.grad, [p.grad for p in params]))
    (o1, gx1, gp1), (o2, gx2, gp2) = outs
    torch.testing.assert_close(o1, o2)
    torch.testing.assert_close(gx1, gx2)
    for p1, p2 in zip(gp1, gp2):
        torch.testing.assert_close(p1, p2)
    if layout == "channels_last":  # same memory format as nn.Conv2d gives (cuDNN keeps float64 NCHW)
        conv_out = F.conv2d(xs[1].detach(), w, b2, 1, 1, 1, g)
        assert o2.is_contiguous(memory_format=torch.channels_last) == conv_out.is_contiguous(
            memory_format=torch.channels_last
        )


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw,wide", [((3, 4), True), ((13, 12), False)], ids=["per-sample-gemm", "batched-gemm"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pointwise_gemm_paths_match_oracle(layout, groups, stride, hw, wide, dtype):
    """The 1x1 conv as GEMMs (src/pointwise.rs) in each of its forms: batched NCHW products, the
    per-sample accumulation of dW' (Cin/g > HW/4), the flat channels_last product (groups 1) and
    the convolution fallback (channels_last with groups); stride 1 takes the transposed-box-sum
    backward, stride 2 the recomputed one."""
    cin, cout = (16, 24) if wide else (4, 6)
    g = torch.Generator().manual_seed(7)
    r = lambda *sh: torch.randn(*sh, generator=g, dtype=torch.float64)  # noqa: E731
    x, w, wa, b1, b2 = (
        r(3, cin, *hw),
        r(cout, cin // groups, 3, 3) * 0.3,
        r(cout, cin // groups, 1, 1) * 0.3,
        r(cout),
        r(cout),
    )
    a = torch.tensor(0.8, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, w, wa, b1, a, b2)]
    ref = ic_conv2d_reference(*leaves, stride, 1, 1, groups)
    go = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, leaves, go)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    cast = [t.to(dtype).requires_grad_() for t in (x.contiguous(memory_format=fmt), w, wa, b1, a, b2)]
    out = ic_conv2d(*cast, stride, 1, 1, groups)
    grads = torch.autograd.grad(out, cast, go.to(dtype).contiguous(memory_format=fmt))
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * 10)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert grads[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize(
    "cin,cout,stride", [(4, 6, 1), (2, 8, 1), (4, 6, 2)], ids=["box-fused", "expanding", "strided"]
)
def test_inference_output_matches_training_forward(device, layout, cin, cout, stride):
    """Without a backward to serve (no_grad) the forward skips relu_z; its output must still be the
    training forward's, bit for bit, on the fused stride-1 path (box sum inside the collision
    kernel), the expanding-channel path (Cout > 2 Cin: box sum first) and the strided one."""
    torch.manual_seed(3)
    m = icn.IcConv2d(cin, cout, 3, stride=stride, padding=1, alpha=0.4).to(device)
    with torch.no_grad():
        m.adjust_bias.normal_()
        m.adjust_weight.normal_()
    x = torch.randn(2, cin, 9, 8, device=device).contiguous(
        memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format
    )
    train = m(x)
    with torch.no_grad():
        infer = m(x)
    assert torch.equal(train.detach(), infer)
    ref = ic_conv2d_reference(
        x.double(),
        *[t.detach().double() for t in (m.weight, m.adjust_weight, m.adjust_bias, m.alpha, m.bias)],
        stride,
        1,
        1,
        1,
    )
    torch.testing.assert_close(infer.double(), ref, rtol=2e-3, atol=2e-3)  # TF32 convolutions on CUDA


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_expanding_stride1_path_matches_oracle(layout):
    """Cout > 2 Cin at stride 1 takes the box-sum-first path (no fusion) in float64."""
    x, w, wa, b1, a, b2, g = _make((3, 3), "1", True, 0.6, cin=2, cout=8)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    _assert_matches_oracle(x, w, wa, b1, a, b2, 1, 1, 1, g)


def test_channels_last_weights_and_grad_layouts():
    # channels_last everything, incl. a channels_last upstream gradient, through the fused kernels
    x, w, wa, b1, a, b2, g = _make((3, 3), "1", True, 0.3, dtype=torch.float32, n=3, cin=8, cout=16, hw=(12, 12))
    ref = ic_conv2d_reference(x, w, wa, b1, a, b2, 1, 1, 1, g)
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = ic_conv2d(xc, w, wa, b1, a, b2, 1, 1, 1, g)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    go = torch.randn_like(out).contiguous(memory_format=torch.channels_last)
    out.backward(go)
    xr = x.clone().requires_grad_()
    ic_conv2d_reference(xr, w, wa, b1, a, b2, 1, 1, 1, g).backward(go.contiguous())
    torch.testing.assert_close(xc.grad, xr.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_size_zero(device):
    m = icn.IcConv2d(4, 6, 3, padding=1, alpha_mode="learnable", device=device)
    x = torch.randn(0, 4, 8, 8, device=device, requires_grad=True)
    out = m(x)
    assert out.shape == (0, 6, 8, 8)
    out.sum().backward()
    assert x.grad.shape == x.shape
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0, name


@pytest.mark.parametrize("device", DEVICES)
def test_float32_close_to_float64(device):
    x, w, wa, b1, a, b2, g = _make((3, 3), "2", True, 0.5, device=device, n=2, cin=8, cout=8, hw=(16, 16))
    o64 = ic_conv2d(x, w, wa, b1, a, b2, 1, 1, 1, g)
    o32 = ic_conv2d(*(t.float() for t in (x, w, wa, b1, a, b2)), 1, 1, 1, g)
    torch.testing.assert_close(o32.double(), o64, rtol=1e-4, atol=1e-4)


def test_grad_of_alpha_nonzero_and_adjust_grads_zero_at_alpha_zero():
    m = icn.IcConv2d(4, 4, 3, padding=1, alpha=0.0, alpha_mode="learnable").double()
    m(torch.randn(2, 4, 8, 8, dtype=torch.float64)).square().sum().backward()
    assert m.alpha.grad is not None and m.alpha.grad.abs() > 0
    for name in ("adjust_weight", "adjust_bias"):
        g = getattr(m, name).grad
        assert g is not None, name  # DDP needs a gradient for every parameter
        assert torch.count_nonzero(g) == 0, name


def test_unbatched_input():
    m = icn.IcConv2d(3, 5, 3, padding=1).double()
    x = torch.randn(3, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(m(x), m(x.unsqueeze(0)).squeeze(0))


def test_opcheck():
    x, w, wa, b1, a, b2, g = _make((3, 3), "2", True, "learnable", n=2, cin=4, cout=4, hw=(6, 6))
    for t in (x, w, wa, b1, a, b2):
        t.requires_grad_(True)
    torch.library.opcheck(
        torch.ops.ic_networks.ic_conv2d_forward.default, (x, w, wa, b1, a, b2, [1, 1], [1, 1], [1, 1], g)
    )
    torch.library.opcheck(
        torch.ops.ic_networks.ic_conv2d_forward.default, (x, w, wa, b1, a, None, [2, 1], [0, 1], [1, 2], g)
    )


CUDA_CASES = [(k, s, p, d, GROUPS[i % 3], BIASES[i % 2], ALPHAS[i % 4]) for i, (k, s, p, d) in enumerate(GEOMS)]


@pytest.mark.cuda
@pytest.mark.parametrize("k,s,p,d,groups,bias,alpha", CUDA_CASES)
def test_cuda_matches_oracle(k, s, p, d, groups, bias, alpha):
    """The same op on CUDA: forward and every gradient against the float64 oracle on the GPU, and
    against the CPU op: the output and all six gradients (x, W, W', b1, alpha, b2)."""
    x, w, wa, b1, a, b2, g = _make(k, groups, bias, alpha, device="cuda")
    out = _assert_matches_oracle(x, w, wa, b1, a, b2, s, p, d, g, tol=1e-9, grad_tol=1e-8)
    go = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    results = {}
    for dev in ("cuda", "cpu"):
        leaves = [t.detach().to(dev).requires_grad_() if t is not None else None for t in (x, w, wa, b1, a, b2)]
        o = ic_conv2d(*leaves, s, p, d, g)
        grads = torch.autograd.grad(o, [t for t in leaves if t is not None], go.to(dev))
        results[dev] = [o.detach().cpu()] + [t.cpu() for t in grads]
    assert len(results["cpu"]) == (7 if bias else 6)
    names = ["out", "x", "weight", "adjust_weight", "adjust_bias", "alpha", "bias"]
    for name, got, want in zip(names, results["cuda"], results["cpu"]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=f"CUDA vs CPU: {name}")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_low_precision_close_to_float64(dtype):
    x, w, wa, b1, a, b2, g = _make((3, 3), "1", True, 0.5, device="cuda", n=4, cin=16, cout=16, hw=(14, 14))
    ref = ic_conv2d(x, w, wa, b1, a, b2, 1, 1, 1, g)
    low = ic_conv2d(*(t.to(dtype) for t in (x, w, wa, b1, a, b2)), 1, 1, 1, g)
    assert low.dtype == dtype
    tol = {torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 2e-1}[dtype]
    torch.testing.assert_close(low.double(), ref, rtol=tol, atol=tol)


@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_low_precision_gradients_close_to_cpu(dtype, layout, monkeypatch):
    """CUDA vs CPU parity of all six gradients in float32 and half types, against the CPU op in
    float64 (relative error in norm: a relu mask that flips in half precision moves a few entries)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    x, w, wa, b1, a, b2, g = _make((3, 3), "2", True, "learnable", device="cuda", n=2, cin=8, cout=8, hw=(12, 12))
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    go = torch.randn(2, 8, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    cuda = [t.detach().to(dtype) for t in (x, w, wa, b1, a, b2)]
    cuda[0] = cuda[0].contiguous(memory_format=fmt)
    cuda = [t.requires_grad_() for t in cuda]
    out = ic_conv2d(*cuda, 1, 1, 1, g)
    got = torch.autograd.grad(out, cuda, go.to("cuda", dtype).contiguous(memory_format=fmt))
    cpu = [t.detach().cpu().requires_grad_() for t in (x, w, wa, b1, a, b2)]
    want = torch.autograd.grad(ic_conv2d(*cpu, 1, 1, 1, g), cpu, go)
    for name, gg, ww in zip(GRAD_NAMES, got, want):
        assert gg.dtype == dtype and gg.shape == ww.shape, name
        err = rel_err(gg, ww, "l2")
        assert err <= REL_TOL[dtype], (name, err)


@pytest.mark.cuda
def test_cuda_gradcheck():
    x, w, wa, b1, a, b2, g = _make((3, 3), "2", True, "learnable", device="cuda", hw=(8, 7))
    inputs = [t.requires_grad_(True) for t in (x, w, wa, b1, a, b2)]
    assert torch.autograd.gradcheck(lambda *t: ic_conv2d(*t, 2, 1, 1, g), inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.fixture
def libtorch_path():
    """Runs a test with the Rust CPU kernels off: CPU tensors then take the libtorch-op path that
    CUDA tensors take, so that path is covered without a GPU."""
    old = icn._core.set_cpu_kernels(False)
    yield
    icn._core.set_cpu_kernels(old)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k,s,p,d,groups,bias,alpha", CUDA_CASES[::3])
def test_libtorch_path_matches_oracle(libtorch_path, layout, k, s, p, d, groups, bias, alpha):
    x, w, wa, b1, a, b2, g = _make(k, groups, bias, alpha)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    _assert_matches_oracle(x, w, wa, b1, a, b2, s, p, d, g)


@pytest.mark.parametrize("k,s,p,d,groups,bias,alpha", CUDA_CASES)
def test_fused_cpu_paths_channels_last_match_oracle(k, s, p, d, groups, bias, alpha):
    """The geometry sweep on channels_last input through the Rust CPU kernels (NHWC box sum, the
    fused collision with and without the box sum folded in, the flat GEMM), float64 oracle."""
    x, w, wa, b1, a, b2, g = _make(k, groups, bias, alpha)
    x = x.contiguous(memory_format=torch.channels_last)
    _assert_matches_oracle(x, w, wa, b1, a, b2, s, p, d, g)


# Half precision on the CPU. Without matrix instructions for the dtype (AVX-512 BF16/FP16, AMX) the
# Rust kernels run the P path and the collision in float32 ("cpu-widened"); with them, and with the
# kernels off, the libtorch steps run in the call's dtype. (stride, cin, cout, groups): the box sum
# fused into the collision, the strided path, Cout > 2 Cin (box sum first), groups.
HALF_CASES = [(1, 8, 8, 1), (2, 8, 8, 1), (1, 2, 8, 1), (1, 8, 8, 2)]
#: Relative error in norm against float64 of a half-precision call whose relu flips no mask: on the
#: widened kernels, whose float32 sums round once, and on the libtorch steps, which round every op.
HALF_TOL = {
    "kernels": {torch.bfloat16: 1.5e-2, torch.float16: 2.5e-3},
    "libtorch": {torch.bfloat16: 3e-2, torch.float16: 4e-3},
}


def _half_margin_case(cin, cout, groups):
    """float64 op arguments whose relu has a wide margin: b1 = +12 on even channels (always on),
    -12 on odd ones (always off), and z - b1 within a few units, so no mask flips when the
    arguments are rounded to half precision and every gradient compares to float64 closely."""
    x, w, wa, _, a, b2 = make_case(groups=groups, cin=cin, cout=cout, hw=(10, 9))
    b1 = torch.where(torch.arange(cout) % 2 == 0, 12.0, -12.0).double()
    return x, w * 0.4, wa, b1, a, b2


def _half_run(args, dtype, stride, groups, layout, go):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    leaves = [t.detach().to(dtype) for t in args]
    leaves[0] = leaves[0].contiguous(memory_format=fmt)
    leaves = [t.requires_grad_() for t in leaves]
    out = ic_conv2d(*leaves, stride, 1, 1, groups)
    assert out.dtype == dtype and out.is_contiguous(memory_format=fmt)
    grads = torch.autograd.grad(out, leaves, go.to(dtype).contiguous(memory_format=fmt))
    assert all(g.dtype == dtype for g in grads)
    with torch.no_grad():  # the inference op (no relu_z): the same bits
        assert torch.equal(ic_conv2d(*leaves, stride, 1, 1, groups), out)
    return [out] + list(grads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("stride,cin,cout,groups", HALF_CASES)
def test_cpu_half_precision_matches_float64(dtype, layout, stride, cin, cout, groups):
    """Output and all six gradients of a float16/bfloat16 CPU call against the float64 oracle, on
    the backend this CPU picks and on the libtorch steps (kernels off)."""
    args = _half_margin_case(cin, cout, groups)
    want_out, _ = oracle(*args, stride, 1, 1, groups)
    go = torch.randn(want_out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    _, want = oracle(*args, stride, 1, 1, groups, grad=go)
    want = [want_out] + [want[n] for n in GRAD_NAMES]
    native = icn._core.cpu_native_half(dtype == torch.bfloat16)
    widened_declined = set()
    for path in ("kernels", "libtorch"):
        old = icn._core.set_cpu_kernels(path == "kernels")
        before = icn._core.backend_declines()
        try:
            got = _half_run(args, dtype, stride, groups, layout, go)
        finally:
            icn._core.set_cpu_kernels(old)
        if path == "kernels":
            after = icn._core.backend_declines()
            widened_declined = {k for k, v in after.items() if k.startswith("cpu-widened") and v > before.get(k, 0)}
        for name, g, w in zip(("out",) + GRAD_NAMES, got, want):
            e = rel_err(g, w, "l2")
            assert e <= HALF_TOL["libtorch" if native else path][dtype], (path, name, e)
    if native:
        assert widened_declined == {
            "cpu-widened: this CPU has matrix instructions for the dtype: the libtorch steps keep it"
        }
    else:
        assert not widened_declined, widened_declined
