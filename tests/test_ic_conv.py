"""The IC convolution op (Rust) against the plain-PyTorch oracle: forward, backward, gradcheck."""

import itertools
import sys
import textwrap

import ic_networks as icn
import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES
from ic_networks.functional import ic_conv2d
from ic_networks.reference import boxsum_reference, ic_conv2d_reference

KERNELS = [(1, 1), (3, 3), (5, 5), (3, 1)]
STRIDES = [1, 2]
PADDINGS = [0, 1, "same"]
DILATIONS = [1, 2]
GROUPS = ["1", "2", "dw"]
BIASES = [True, False]
ALPHAS = [0.0, 0.03, 1.0, "learnable"]


def _make(k, groups, bias, alpha, dtype=torch.float64, device="cpu", n=2, cin=4, cout=4, hw=(11, 10), seed=0):
    g = torch.Generator().manual_seed(seed)
    groups = {"1": 1, "2": 2, "dw": cin}[groups]
    if groups == cin:
        cout = cin

    def r(*s):
        return torch.randn(*s, generator=g, dtype=dtype).to(device)

    x = r(n, cin, *hw)
    w = r(cout, cin // groups, *k) * 0.5
    wa = r(cout, cin // groups, 1, 1) * 0.2
    b1 = r(cout) * 0.5
    b2 = r(cout) if bias else None
    a = torch.tensor(0.7 if alpha == "learnable" else alpha, dtype=dtype, device=device)
    return x, w, wa, b1, a, b2, groups


def _geometry_cases():
    for k, s, p, d in itertools.product(KERNELS, STRIDES, PADDINGS, DILATIONS):
        if p == "same" and s != 1:
            continue
        yield k, s, p, d


GEOMS = list(_geometry_cases())


def _assert_matches_oracle(x, w, wa, b1, a, b2, s, p, d, g, tol=1e-10, grad_tol=1e-9):
    """Forward and every gradient of the Rust op against the plain-PyTorch oracle; returns the output."""
    leaves = [t.requires_grad_(True) for t in (x, w, wa, b1, a, b2) if t is not None]
    out = ic_conv2d(x, w, wa, b1, a, b2, s, p, d, g)
    ref = ic_conv2d_reference(x, w, wa, b1, a, b2, s, p, d, g)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    go = torch.randn_like(out)
    for gg, ww in zip(torch.autograd.grad(out, leaves, go), torch.autograd.grad(ref, leaves, go)):
        torch.testing.assert_close(gg, ww, rtol=grad_tol, atol=grad_tol)
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


BAD_INPUTS = textwrap.dedent(
    r"""
    import torch, ic_networks as icn
    from ic_networks.functional import ic_conv2d
    ok = lambda *s: torch.randn(*s)
    x, w, wa, b1, a = ok(2, 4, 8, 8), ok(6, 4, 3, 3), ok(6, 4, 1, 1), ok(6), torch.tensor(0.5)
    cases = {
        "rank":        lambda: ic_conv2d(ok(4, 8), w, wa, b1, a),
        "weight_rank": lambda: ic_conv2d(x, ok(6, 4, 3), wa, b1, a),
        "dtype_mismatch": lambda: ic_conv2d(x.double(), w, wa, b1, a),
        "int_tensor":  lambda: ic_conv2d(torch.ones(2, 4, 8, 8, dtype=torch.int64), w.long(), wa.long(), b1.long(), a),
        "channels":    lambda: ic_conv2d(ok(2, 5, 8, 8), w, wa, b1, a),
        "groups":      lambda: ic_conv2d(x, w, wa, b1, a, groups=3),
        "groups_out":  lambda: ic_conv2d(x, ok(6, 1, 3, 3), ok(6, 1, 1, 1), b1, a, groups=4),
        "adjust_w":    lambda: ic_conv2d(x, w, ok(6, 4, 3, 3), b1, a),
        "adjust_b":    lambda: ic_conv2d(x, w, wa, ok(5), a),
        "bias":        lambda: ic_conv2d(x, w, wa, b1, a, bias=ok(7)),
        "alpha_shape": lambda: ic_conv2d(x, w, wa, b1, ok(3)),
        "alpha_type":  lambda: ic_conv2d(x, w, wa, b1, "big"),
        "stride0":     lambda: ic_conv2d(x, w, wa, b1, a, stride=0),
        "neg_pad":     lambda: ic_conv2d(x, w, wa, b1, a, padding=-1),
        "dilation0":   lambda: ic_conv2d(x, w, wa, b1, a, dilation=0),
        "too_small":   lambda: ic_conv2d(ok(2, 4, 2, 2), w, wa, b1, a),
        "not_tensor":  lambda: ic_conv2d([[1.0]], w, wa, b1, a),
        "bad_padding": lambda: ic_conv2d(x, w, wa, b1, a, padding="full"),
        "same_stride": lambda: ic_conv2d(x, w, wa, b1, a, stride=2, padding="same"),
        "module_alpha_mode": lambda: icn.IcConv2d(4, 4, 3, alpha_mode="sometimes"),
        "module_rank": lambda: icn.IcConv2d(4, 4, 3)(ok(4)),
        "groups_bool": lambda: ic_conv2d(x, w, wa, b1, a, groups=True),
    }
    if torch.cuda.is_available():
        cases["device"] = lambda: ic_conv2d(x.cuda(), w, wa, b1, a)
    for name, fn in cases.items():
        try:
            fn()
        except (ValueError, TypeError, RuntimeError) as e:
            msg = str(e)
            assert msg and "panicked" not in msg and "Exception raised from" not in msg, (name, msg)
            print(f"{name}\t{type(e).__name__}\t{msg.splitlines()[0]}")
        else:
            print(f"{name}\tNO-ERROR\t")
    print("SURVIVED")
    """
)


def test_bad_inputs_raise_clear_errors_in_subprocess(tmp_path):
    from ic_networks.training import watchdog

    r = watchdog.run(
        [sys.executable, "-X", "faulthandler", "-c", BAD_INPUTS],
        300,
        dump_dir=tmp_path,
        merge_stderr=False,
        what="bad-input sweep",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "SURVIVED" in r.stdout
    lines = dict(line.split("\t", 1) for line in r.stdout.splitlines() if "\t" in line)
    bad = {k: v for k, v in lines.items() if v.startswith("NO-ERROR")}
    assert not bad, bad
    expected_words = {
        "rank": "x",
        "weight_rank": "weight",
        "dtype_mismatch": "dtype",
        "int_tensor": "floating",
        "channels": "channels",
        "groups": "groups",
        "adjust_w": "adjust_weight",
        "adjust_b": "adjust_bias",
        "bias": "bias",
        "alpha_shape": "alpha",
        "alpha_type": "alpha",
        "stride0": "stride",
        "neg_pad": "padding",
        "dilation0": "dilation",
        "too_small": "kernel",
        "not_tensor": "x",
        "bad_padding": "padding",
        "same_stride": "same",
        "module_alpha_mode": "alpha_mode",
        "module_rank": "x",
        "groups_bool": "groups",
    }
    for name, word in expected_words.items():
        assert word in lines[name], (name, lines[name])


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
    tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    for name, gg, ww in zip(["x", "weight", "adjust_weight", "adjust_bias", "alpha", "bias"], got, want):
        assert gg.dtype == dtype and gg.shape == ww.shape, name
        err = (gg.double().cpu() - ww).norm() / ww.norm().clamp_min(1e-6)
        assert err <= tol, (name, float(err))


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


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(stride=-1), "stride"),
        (dict(stride=0), "stride"),
        (dict(stride=(1, 0)), "stride"),
        (dict(kernel_size=0), "kernel_size"),
        (dict(kernel_size=(3, -1)), "kernel_size"),
        (dict(padding=-1), "padding"),
        (dict(padding=(0, -2)), "padding"),
        (dict(padding="full"), "padding"),
        (dict(dilation=0), "dilation"),
        (dict(groups=0), "groups"),
        (dict(groups=3), "groups"),
        (dict(out_channels=6, groups=4), "groups"),
        (dict(in_channels=0), "in_channels"),
        (dict(out_channels=-2), "out_channels"),
        (dict(alpha_mode="sometimes"), "alpha_mode"),
        (dict(stride=2, padding="same"), "same"),
    ],
)
def test_constructor_refuses_bad_arguments_naming_them(kwargs, name):
    args = dict(in_channels=4, out_channels=8, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        icn.IcConv2d(**args)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(stride=1.5), "stride"),
        (dict(kernel_size="3"), "kernel_size"),
        (dict(groups=True), "groups"),
        (dict(dilation=(1, 2, 3)), "dilation"),
    ],
)
def test_constructor_refuses_wrong_argument_types_naming_them(kwargs, name):
    args = dict(in_channels=4, out_channels=8, kernel_size=3)
    args.update(kwargs)
    with pytest.raises((TypeError, ValueError), match=name):
        icn.IcConv2d(**args)


def test_double_backward_is_refused_naming_the_reference():
    """A gradient penalty: the native op's gradient is not differentiable again; the error names the
    twice-differentiable reference, and the reference's second derivative is a real one."""
    torch.manual_seed(0)
    layer = icn.IcConv2d(3, 4, 3, padding=1, alpha=0.5).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"double backward.*ic_networks\.reference\.ic_conv2d_reference"):
        gx.square().sum().backward()
    args = (layer.weight, layer.adjust_weight, layer.adjust_bias, layer.alpha, layer.bias, 1, 1, 1, 1)
    (gx_ref,) = torch.autograd.grad(ic_conv2d_reference(x, *args).square().sum(), x, create_graph=True)
    torch.testing.assert_close(gx_ref, gx.detach())
    (gw,) = torch.autograd.grad(gx_ref.square().sum(), layer.weight)
    assert gw.abs().sum() > 0
    assert torch.autograd.gradgradcheck(
        lambda x_, w_: ic_conv2d_reference(x_, w_, *args[1:]),
        (x.detach()[:1].requires_grad_(), layer.weight.detach().requires_grad_()),
    )
