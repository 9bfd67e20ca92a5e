"""The fused CUDA kernels (src/cuda/kernels/collision.cu) without a GPU.

* The kernel source compiled as host C++ with src/cuda/kernels/ic_emu.h (g++, here, into a temp
  dir) runs under a sequential grid emulation (every block's threads as fibers between barriers,
  in ascending and in descending order: a race between threads would make the two differ) over a
  geometry sweep, and the composed IC layer (forward, backward) is compared with the float64
  oracle (``reference.py`` + autograd) and with the CPU kernels of ``ic_networks._core``.
* The same source compiled through NVRTC for every supported arch (skipped when libnvrtc is not
  loadable), the entry names and the absence of local-memory spills checked.

The launch plan (tiles, grid, shared memory) is mirrored from src/cuda/fused/launch.rs; the sweep
also runs small tiles so that every geometry crosses tile borders.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ic_networks.functional import ic_conv2d
from ic_networks.reference import boxsum_reference, ic_conv2d_reference

ROOT = Path(__file__).resolve().parents[1]
KERNEL = ROOT / "src" / "cuda" / "kernels" / "collision.cu"
EMU_API = ROOT / "tests" / "cuda_emu" / "emu_api.cpp"


# --------------------------------------------------------------------------- emulation library

@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the kernel emulation")
    out = tmp_path_factory.mktemp("emu") / "ic_emu.so"
    subprocess.run([cxx, "-std=c++17", "-O1", "-Wall", "-Werror", "-shared", "-fPIC", str(EMU_API), "-o", str(out)],
                   check=True, capture_output=True, text=True)
    lib = ctypes.CDLL(str(out))
    lib.ic_emu_launch.restype = ctypes.c_long
    lib.ic_emu_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
                                  ctypes.c_size_t, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
    lib.ic_emu_entries.restype = ctypes.c_char_p
    return lib


class Strides(ctypes.Structure):
    _fields_ = [(n, ctypes.c_longlong) for n in ("n", "c", "h", "w")]


class BoxParams(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int) for n in (
        "N", "C", "H", "W", "Ho", "Wo", "kh", "kw", "ph", "pw", "dh", "dw",
        "TC", "TH", "TW", "tiles_c", "tiles_h", "tiles_w", "cl")] + [
        (n, Strides) for n in ("s_box", "s_a", "s_b", "s_r")]


class BoxsumParams(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int) for n in (
        "N", "C", "H", "W", "Ho", "Wo", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "mode", "cl")] + [
        (n, Strides) for n in ("s_in", "s_out")]


class ReduceParams(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int) for n in ("N", "C", "TC", "tiles_c", "tiles_sp", "dalpha")]


SUFFIX = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16"}


def acc_dtype(dt):
    return torch.float64 if dt == torch.float64 else torch.float32


def strides(t):
    return Strides(*t.stride()) if t is not None else Strides(0, 0, 0, 0)


def is_cl(t):
    """Channel-fastest thread order: what launch.rs picks for channels_last tensors."""
    s = t.stride()
    return int(t.shape[1] > 1 and s[1] == 1)


def launch(lib, name, grid, block, smem, order, *args):
    keep = []
    for a in args:
        if isinstance(a, torch.Tensor):
            keep.append(ctypes.c_void_p(a.data_ptr()))
        elif a is None:
            keep.append(ctypes.c_void_p(0))
        else:
            keep.append(a)
    ptrs = (ctypes.c_void_p * len(keep))(*[ctypes.cast(ctypes.pointer(k), ctypes.c_void_p) for k in keep])
    r = lib.ic_emu_launch(name.encode(), grid[0], grid[1], grid[2], block, smem, order, ptrs)
    assert r >= 0, f"unknown kernel {name}"
    return r


def pow2ceil(v):
    return 1 << max(0, int(v - 1).bit_length())


def plan_tile(c, rows, cols, cl, nt):
    """Default tile (launch.rs `plan_tile`): channels_last 8 channels x 8 x 16 (fewer channels when
    C is small), NCHW one channel x up to 512 pixels shaped after the image."""
    if cl:
        tc = min(8, pow2ceil(c))
        return tc, min(8, pow2ceil(rows)), min(16, pow2ceil(cols))
    tw = min(32, max(8, pow2ceil(cols)))
    th = min(max(512 // tw, 1), pow2ceil(rows))
    return 1, th, tw


def threads_for(tile):
    """launch.rs `threads_for`: about four outputs per thread, at least a row of the tile's
    channels x columns and 64 threads, at most 256."""
    tc, th, tw = tile
    return min(256, max(tc * tw, 64, pow2ceil(tc * th * tw) // 4))


def box_params(n, c, h, w, ho, wo, kh, kw, ph, pw, dh, dw, cl, tile, bwd, t_box, t_a, t_b, t_r):
    tc, th, tw = tile
    rows, cols = (max(ho, h + ph), max(wo, w + pw)) if bwd else (ho, wo)
    p = BoxParams(n, c, h, w, ho, wo, kh, kw, ph, pw, dh, dw, tc, th, tw,
                  -(-c // tc), -(-rows // th), -(-cols // tw), cl,
                  strides(t_box), strides(t_a), strides(t_b), strides(t_r))
    return p


def alpha_args(alpha, a, by_ptr):
    """The kernels' two alpha parameters: (value, None), or (unused value, a one-element tensor)
    for an alpha the kernel reads through its pointer (an alpha on the device)."""
    t = torch.as_tensor(alpha, dtype=a).reshape(1)
    scalar = ctypes.c_double if a == torch.float64 else ctypes.c_float
    return (scalar(0.0), t) if by_ptr else (scalar(t.item()), None)


def emu_fwd_box(lib, y, q, shift, alpha, k, pad, dil, keep_rz=True, tile=None, nt=256, order=0, alpha_ptr=False):
    """out (in place in a copy of y), relu_z from Yb and Q (stride-1 box sum inside)."""
    (n, c, ho, wo), (h, w) = y.shape, q.shape[2:]
    cl = is_cl(y)
    tile = tile or plan_tile(c, ho, wo, cl, nt)
    nt = nt or threads_for(tile)  # 0: launch.rs's choice
    out = y.clone()
    rz = torch.empty_like(y) if keep_rz else None
    a = acc_dtype(y.dtype)
    p = box_params(n, c, h, w, ho, wo, k[0], k[1], pad[0], pad[1], dil[0], dil[1], cl, tile, False, q, out, out, rz)
    hh, hw = tile[1] + dil[0] * (k[0] - 1), tile[2] + dil[1] * (k[1] - 1)
    smem = tile[0] * hh * hw * a.itemsize
    sh = shift.to(a).contiguous()
    av, ap = alpha_args(alpha, a, alpha_ptr)
    grid = (p.tiles_h * p.tiles_w, p.tiles_c, n)
    launch(lib, f"ic_fwd_box_{SUFFIX[y.dtype]}", grid, nt, smem, order, out, q, out, rz, sh, av, ap, p)
    return out, rz


def emu_bwd_box(lib, grad, rz, alpha, in_hw, k, pad, dil, need_gy=True, tile=None, nt=256, order=0, alpha_ptr=False,
                need_dalpha=True):
    """gy, G = boxsum^T(gz) on the input grid, and (db1, db2, dalpha) in the accumulation dtype."""
    n, c, ho, wo = grad.shape
    h, w = in_hw
    cl = is_cl(grad)
    tile = tile or plan_tile(c, max(ho, h + pad[0]), max(wo, w + pad[1]), cl, nt)
    nt = nt or threads_for(tile)  # 0: launch.rs's choice
    a = acc_dtype(grad.dtype)
    gy = torch.empty_like(grad) if need_gy else None
    mf = torch.channels_last if cl else torch.contiguous_format
    G = torch.empty((n, c, h, w), dtype=grad.dtype).contiguous(memory_format=mf)
    p = box_params(n, c, h, w, ho, wo, k[0], k[1], pad[0], pad[1], dil[0], dil[1], cl, tile, True, G, grad, gy, rz)
    hh, hw = tile[1] + dil[0] * (k[0] - 1), tile[2] + dil[1] * (k[1] - 1)
    smem = (tile[0] * hh * hw + 3 * nt) * a.itemsize
    tiles_sp = p.tiles_h * p.tiles_w
    part = torch.full((n * p.tiles_c * tiles_sp * tile[0] * 3,), float("nan"), dtype=a)
    av, ap = alpha_args(alpha, a, alpha_ptr)
    launch(lib, f"ic_bwd_box_{SUFFIX[grad.dtype]}", (tiles_sp, p.tiles_c, n), nt, smem, order, grad, rz, gy, G, av, ap, part, p)
    sums = torch.full((c, 3), float("nan"), dtype=a)
    rp = ReduceParams(n, c, tile[0], p.tiles_c, tiles_sp, int(need_dalpha))
    launch(lib, f"ic_reduce_{SUFFIX[a]}", (c, 1, 1), max(nt, 32), 3 * max(nt, 32) * a.itemsize, order, part, sums, rp)
    # d alpha: the per-channel values added in a fixed order (launch.rs: torch's sum)
    return gy, G, sums[:, 0], sums[:, 1], (sums[:, 2].sum() if need_dalpha else None)


def boxsum_params(x_shape, o_shape, k, s, pad, dil, mode, cl, t_in, t_out):
    return BoxsumParams(x_shape[0], x_shape[1], x_shape[2], x_shape[3], o_shape[2], o_shape[3],
                        k[0], k[1], s[0], s[1], pad[0], pad[1], dil[0], dil[1], mode, cl, strides(t_in), strides(t_out))


def emu_boxsum(lib, x, k, s, pad, dil, order=0, nt=128, blocks=7):
    n, c, h, w = x.shape
    ho = (h + 2 * pad[0] - dil[0] * (k[0] - 1) - 1) // s[0] + 1
    wo = (w + 2 * pad[1] - dil[1] * (k[1] - 1) - 1) // s[1] + 1
    cl = is_cl(x)
    out = torch.empty((n, c, ho, wo), dtype=x.dtype).contiguous(
        memory_format=torch.channels_last if cl else torch.contiguous_format)
    p = boxsum_params(x.shape, out.shape, k, s, pad, dil, 0, cl, x, out)
    launch(lib, f"ic_boxsum_{SUFFIX[x.dtype]}", (blocks, 1, 1), nt, 0, order, x, out, p)
    return out


def emu_boxsum_t(lib, ds, dx, k, s, pad, dil, mode, order=0, nt=128, blocks=5):
    p = boxsum_params(dx.shape, ds.shape, k, s, pad, dil, mode, is_cl(dx), ds, dx)
    launch(lib, f"ic_boxsum_t_{SUFFIX[ds.dtype]}", (blocks, 1, 1), nt, 0, order, ds, dx, p)
    return dx


# --------------------------------------------------------------------------- the composed layer

def make_case(n, cin, cout, hw, k, pad, dil, stride, groups, dtype, cl, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x = r(n, cin, *hw)
    w = r(cout, cin // groups, *k) * 0.3
    wa = r(cout, cin // groups, 1, 1) * 0.3
    b1, b2 = r(cout) * 0.5, r(cout) * 0.5
    alpha = torch.tensor(0.7, dtype=torch.float64)
    t = [x, w, wa, b1, b2, alpha]
    t = [v.to(dtype) for v in t]
    if cl:
        t[0] = t[0].contiguous(memory_format=torch.channels_last)
    return t


def emu_layer(lib, x, w, wa, b1, b2, alpha, stride, pad, dil, groups, grad, tile=None, nt=256, order=0, alpha_ptr=False):
    """IC forward + backward, the convolutions by torch and the memory-bound part by the emulated
    kernels, as src/cuda/fused composes them (stride 1: Q = W'x, fused box; else S, P, k = 1)."""
    k = tuple(w.shape[2:])
    y = F.conv2d(x, w, b2, stride, pad, dil, groups)
    shift = b1 - b2
    if tuple(stride) == (1, 1):
        q = F.conv2d(x, wa, None, 1, 0, 1, groups)
        out, rz = emu_fwd_box(lib, y, q, shift, alpha, k, pad, dil, tile=tile, nt=nt, order=order, alpha_ptr=alpha_ptr)
        gy, G, db1, db2, da = emu_bwd_box(lib, grad, rz, alpha, x.shape[2:], k, pad, dil, tile=tile, nt=nt, order=order,
                                          alpha_ptr=alpha_ptr)
        dx = torch.nn.grad.conv2d_input(x.shape, w, gy, stride, pad, dil, groups)
        dx -= torch.nn.grad.conv2d_input(x.shape, wa, G, 1, 0, 1, groups)
        dwa = -torch.nn.grad.conv2d_weight(x, wa.shape, G, 1, 0, 1, groups)
    else:
        s = emu_boxsum(lib, x, k, stride, pad, dil, order=order)
        p = F.conv2d(s, wa, None, 1, 0, 1, groups)
        out, rz = emu_fwd_box(lib, y, p, shift, alpha, (1, 1), (0, 0), (1, 1), tile=tile, nt=nt, order=order, alpha_ptr=alpha_ptr)
        gy, gz, db1, db2, da = emu_bwd_box(lib, grad, rz, alpha, y.shape[2:], (1, 1), (0, 0), (1, 1), tile=tile, nt=nt, order=order,
                                           alpha_ptr=alpha_ptr)
        dx = torch.nn.grad.conv2d_input(x.shape, w, gy, stride, pad, dil, groups)
        ds = torch.nn.grad.conv2d_input(s.shape, wa, gz, 1, 0, 1, groups)
        emu_boxsum_t(lib, ds.contiguous(memory_format=torch.channels_last if is_cl(dx) else torch.contiguous_format),
                     dx, k, stride, pad, dil, mode=1, order=order)
        dwa = -torch.nn.grad.conv2d_weight(s, wa.shape, gz, 1, 0, 1, groups)
    dw = torch.nn.grad.conv2d_weight(x, w.shape, gy, stride, pad, dil, groups)
    return out, rz, dict(x=dx, weight=dw, adjust_weight=dwa, adjust_bias=db1, alpha=da, bias=db2)


def oracle(x, w, wa, b1, b2, alpha, stride, pad, dil, groups, grad):
    leaves = [t.detach().double().requires_grad_() for t in (x, w, wa, b1, alpha, b2)]
    out = ic_conv2d_reference(*leaves[:5], leaves[5], stride, pad, dil, groups)
    gs = torch.autograd.grad(out, leaves, grad.double(), allow_unused=True)
    names = ["x", "weight", "adjust_weight", "adjust_bias", "alpha", "bias"]
    return out.detach(), {k: (v if v is not None else torch.zeros_like(l)) for k, v, l in zip(names, gs, leaves)}


def maxrel(a, b):
    a, b = a.double(), b.double()
    if a.numel() == 0:
        return 0.0
    return ((a - b).abs().max() / (b.abs().max() + 1e-12)).item()


CASES = []
for i, (k, pad, dil, stride, c, n, hw, cl) in enumerate(itertools.product(
        [(1, 1), (3, 3), (5, 5), (3, 5)], [0, 1, 2], [1, 2], [1, 2], [1, 3, 8, 17], [0, 1, 2], [(7, 9), (12, 12)], [False, True])):
    # a deterministic subsample of the product (every value of every axis appears many times)
    if (i * 7919) % 23 != 0:
        continue
    if dil * (k[0] - 1) + 1 > hw[0] + 2 * pad or dil * (k[1] - 1) + 1 > hw[1] + 2 * pad:
        continue
    CASES.append((k, pad, dil, stride, c, n, hw, cl))


def case_id(case):
    k, pad, dil, stride, c, n, hw, cl = case
    return f"k{k[0]}x{k[1]}-p{pad}-d{dil}-s{stride}-c{c}-n{n}-{hw[0]}x{hw[1]}-{'cl' if cl else 'nchw'}"


SWEEP_STATS = {"cases": 0, "max_fwd": 0.0, "max_bwd": 0.0}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_emulated_layer_matches_float64_oracle(emu, case):
    k, pad, dil, stride, c, n, hw, cl = case
    groups = 1 if c % 2 else (2 if c >= 2 else 1)
    t = make_case(n, c, c + 1 if groups == 1 else c, hw, k, (pad, pad), (dil, dil), (stride, stride), groups, torch.float64, cl, seed=hash(case) & 0xffff)
    x, w, wa, b1, b2, alpha = t
    st, pd, dl = (stride, stride), (pad, pad), (dil, dil)
    y_shape = F.conv2d(x, w, None, st, pd, dl, groups).shape
    grad = torch.randn(y_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    if cl:
        grad = grad.contiguous(memory_format=torch.channels_last)
    ref_out, ref_g = oracle(x, w, wa, b1, b2, alpha, st, pd, dl, groups, grad)
    tiles = [None, (1, 2, 4) if not cl else (4, 2, 4)]
    results = []
    # the default tile with launch.rs's threads (nt 0) and alpha through its device pointer, then small
    # tiles (every geometry crosses tile borders) in both thread orders with alpha by value
    for tile, nt, order, by_ptr in [(tiles[0], 0, 0, True), (tiles[1], 32, 0, False), (tiles[1], 32, 1, False)]:
        out, rz, g = emu_layer(emu, x, w, wa, b1, b2, alpha, st, pd, dl, groups, grad, tile=tile, nt=nt, order=order, alpha_ptr=by_ptr)
        assert maxrel(out, ref_out) < 1e-12, f"forward (tile {tile}, {nt} threads)"
        z = F.conv2d(x, w, b2, st, pd, dl, groups)
        assert maxrel(rz, (ref_out - z) / 0.7) < 1e-10
        for name, ref in ref_g.items():
            assert maxrel(g[name].reshape(ref.shape), ref) < 1e-11, f"d{name} (tile {tile}, {nt} threads, order {order})"
        results.append((out, g))
        SWEEP_STATS["max_fwd"] = max(SWEEP_STATS["max_fwd"], maxrel(out, ref_out))
        SWEEP_STATS["max_bwd"] = max(SWEEP_STATS["max_bwd"], *(maxrel(g[k_].reshape(r.shape), r) for k_, r in ref_g.items()))
    # the same tile in both thread/block orders: bit-identical (no race, deterministic sums)
    (o1, g1), (o2, g2) = results[1], results[2]
    assert torch.equal(o1, o2)
    for name in g1:
        assert torch.equal(g1[name], g2[name]), name
    SWEEP_STATS["cases"] += 1


def test_sweep_size():
    assert len(CASES) >= 60, len(CASES)
    if SWEEP_STATS["cases"]:
        print(f"\nemulation sweep: {SWEEP_STATS['cases']} geometries x 3 (tile, threads, order) runs; "
              f"max rel. error vs float64 oracle: forward {SWEEP_STATS['max_fwd']:.2e}, backward {SWEEP_STATS['max_bwd']:.2e}")


def test_core_without_driver_declines_cleanly():
    """No libcuda here: the fused API says why, declines CPU tensors, and warm-up raises."""
    core = _core()
    if not hasattr(core, "cuda_fused_available"):
        pytest.skip("this _core build has no fused CUDA bindings")
    if torch.cuda.is_available():
        assert core.cuda_fused_available(), core.cuda_fused_unavailable_reason()
        return
    assert core.cuda_fused_available() is False
    assert "libcuda" in core.cuda_fused_unavailable_reason() or "driver" in core.cuda_fused_unavailable_reason()
    assert core.cuda_fused_enabled() is False
    x = torch.zeros(1, 2, 3, 3)
    assert core.cuda_fused_box_forward(x, x, torch.zeros(2), torch.tensor(0.5), [3, 3], [1], [1], True, 0) is None
    assert core.cuda_fused_collision_backward(x, x, torch.tensor(0.5), True, 0) is None
    with pytest.raises(RuntimeError, match="unavailable"):
        core.cuda_fused_warm_up(0)
    with pytest.raises(ValueError, match="mode"):
        core.cuda_fused_boxsum_t_(x, x, [3, 3], [1], [1], [1], "bogus", 0)


def _core():
    try:
        from ic_networks import _core
    except ImportError as e:  # pragma: no cover
        pytest.skip(f"ic_networks._core not built: {e}")
    return _core


@pytest.mark.parametrize("stride,cl", [(1, False), (1, True), (2, False), (2, True)])
@pytest.mark.parametrize("k,pad,dil", [((3, 3), 1, 1), ((5, 5), 2, 1), ((3, 3), 2, 2), ((1, 1), 0, 1)])
def test_emulated_float32_matches_cpu_kernels(emu, stride, cl, k, pad, dil):
    _core()  # the registered ops load with it
    x, w, wa, b1, b2, alpha = make_case(2, 8, 8, (11, 10), k, (pad, pad), (dil, dil), (stride, stride), 1, torch.float32, cl, seed=11)
    st, pd, dl = [stride, stride], [pad, pad], [dil, dil]
    ops = torch.ops.ic_networks  # the CPU kernels behind the registered ops
    cpu_out, cpu_rz = ops.ic_conv2d_forward(x, w, wa, b1, alpha, b2, st, pd, dl, 1)
    grad = torch.randn_like(cpu_out)
    cpu_g = ops.ic_conv2d_backward(grad, x, w, wa, b1, alpha, cpu_rz, True, st, pd, dl, 1, [True] * 6)
    out, rz, g = emu_layer(emu, x, w, wa, b1, b2, alpha, st, pd, dl, 1, grad)
    assert maxrel(out, cpu_out) < 2e-6
    assert maxrel(rz, cpu_rz) < 2e-5
    for name, cg in zip(["x", "weight", "adjust_weight", "adjust_bias", "alpha", "bias"], cpu_g):
        assert maxrel(g[name].reshape(cg.shape), cg) < 1e-4, name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cl", [False, True])
def test_emulated_half_types(emu, dtype, cl):
    """Half inputs, float32 math, one rounding per stored value: compared with the same formula
    evaluated in float32 and rounded by torch."""
    x, w, wa, b1, b2, alpha = make_case(2, 8, 8, (9, 9), (3, 3), (1, 1), (1, 1), (1, 1), 1, dtype, cl, seed=5)
    y = F.conv2d(x.float(), w.float(), b2.float(), 1, 1).to(dtype)
    q = F.conv2d(x.float(), wa.float()).to(dtype)
    if cl:
        y, q = (t.contiguous(memory_format=torch.channels_last) for t in (y, q))
    shift = (b1.float() - b2.float())
    out, rz = emu_fwd_box(emu, y, q, shift, float(alpha), (3, 3), (1, 1), (1, 1))
    p = boxsum_reference(q.float(), (3, 3), 1, 1)
    z32 = torch.relu(y.float() - p + shift.view(1, -1, 1, 1))
    ref = (y.float() + alpha.float() * z32).to(dtype)
    # P's float32 sum order differs from conv's: allow one unit in the last place of the result.
    ulp = 2.0 ** (-10 if dtype == torch.float16 else -7)
    assert ((out.float() - ref.float()).abs() <= ulp * ref.float().abs().clamp_min(1)).all()
    assert ((rz.float() - z32.to(dtype).float()).abs() <= ulp * z32.abs().clamp_min(1)).all()
    grad = torch.randn(y.shape).to(dtype)
    if cl:
        grad = grad.contiguous(memory_format=torch.channels_last)
    gy, G, db1, db2, da = emu_bwd_box(emu, grad, rz, float(alpha), (9, 9), (3, 3), (1, 1), (1, 1))
    gz = torch.where(rz.float() > 0, alpha.float() * grad.float(), torch.zeros(()))
    assert torch.equal(gy, (grad.float() + gz).to(dtype))
    Gref = torch.nn.grad.conv2d_input(G.shape, torch.ones(8, 1, 3, 3), gz, 1, 1, 1, 8)
    assert ((G.float() - Gref).abs() <= ulp * Gref.abs().clamp_min(1)).all()
    assert torch.allclose(db1, gz.sum((0, 2, 3)), rtol=1e-5, atol=1e-4)
    assert torch.allclose(db2, grad.float().sum((0, 2, 3)), rtol=1e-5, atol=1e-4)
    assert torch.allclose(da, (grad.float() * rz.float()).sum(), rtol=1e-5, atol=1e-4)


def test_half_conversions_match_torch(emu):
    """The software float <-> half / bfloat16 conversions (the emulation's; the GPU uses cvt
    instructions, and the software bfloat16 rounding below sm_80) agree with torch bit for bit on
    normals, subnormals, ties, overflow, inf and NaN."""
    vals = torch.cat([torch.randn(20000) * s for s in (1e-8, 1e-6, 1e-4, 1, 100, 6e4, 1e5, 1e38)] + [
        torch.tensor([0.0, -0.0, 65504.0, 65519.0, 65520.0, float("inf"), -float("inf"), float("nan"),
                      2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 2.0 ** -14, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11])])
    vals = vals.float().contiguous()
    fp = ctypes.POINTER(ctypes.c_float)
    for kind, dt in ((0, torch.float16), (1, torch.bfloat16)):
        out = torch.empty(vals.shape, dtype=dt)
        emu.ic_emu_convert(ctypes.cast(vals.data_ptr(), fp), ctypes.c_void_p(out.data_ptr()), vals.numel(), kind, 0)
        want = vals.to(dt)
        nan = want.isnan()
        assert torch.equal(out.isnan(), nan)
        assert torch.equal(out.view(torch.int16)[~nan], want.view(torch.int16)[~nan]), dt
        # every 16-bit pattern back to float32
        bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
        h = bits.view(dt).contiguous()
        back = torch.empty(h.shape, dtype=torch.float32)
        emu.ic_emu_convert(ctypes.cast(back.data_ptr(), fp), ctypes.c_void_p(h.data_ptr()), h.numel(), kind, 1)
        ref = h.float()
        nan = ref.isnan()
        assert torch.equal(back.isnan(), nan)
        assert torch.equal(back.view(torch.int32)[~nan], ref.view(torch.int32)[~nan]), dt


def test_divergent_barrier_is_detected(tmp_path):
    """The emulation refuses what a GPU would not run reliably (a barrier in divergent code)."""
    src = tmp_path / "bad.cpp"
    src.write_text(f'#include "{ROOT}/src/cuda/kernels/ic_emu.h"\n'
                   "__global__ void bad() { if (threadIdx.x < 3) __syncthreads(); }\n"
                   "int main() { ic_emu::launch(dim3(1), dim3(8), 0, 0, [] { bad(); }); }\n")
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no g++")
    subprocess.run([cxx, "-std=c++17", str(src), "-o", str(tmp_path / "bad")], check=True)
    r = subprocess.run([str(tmp_path / "bad")], capture_output=True, text=True)
    assert r.returncode != 0 and "__syncthreads reached by only some threads" in r.stderr


def test_zero_batch(emu):
    y = torch.empty(0, 4, 5, 5)
    out, rz = emu_fwd_box(emu, y, torch.empty(0, 4, 5, 5), torch.zeros(4), 0.5, (3, 3), (1, 1), (1, 1))
    assert out.shape == y.shape and rz.shape == y.shape
    gy, G, db1, db2, da = emu_bwd_box(emu, y, y, 0.5, (5, 5), (3, 3), (1, 1), (1, 1))
    assert torch.equal(db1, torch.zeros(4)) and torch.equal(db2, torch.zeros(4)) and da.item() == 0.0


# --------------------------------------------------------------------------- NVRTC (no GPU needed)

ARCHS = [75, 80, 86, 89, 90, 100, 120]


def _nvrtc():
    for name in ("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def nvrtc_compile(lib, arch: str):
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), KERNEL.read_bytes(), b"collision.cu", 0, None, None) == 0
    opts = [f"--gpu-architecture={arch}".encode(), b"-std=c++17", b"-default-device"]
    if arch.startswith("sm_"):
        opts += [b"-Xptxas", b"-v"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    t0 = time.perf_counter()
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    dt = time.perf_counter() - t0
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    assert rc == 0, log.value.decode()
    lib.nvrtcGetPTXSize(prog, ctypes.byref(n))
    ptx = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetPTX(prog, ptx)
    cubin = b""
    if arch.startswith("sm_"):
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
        buf = ctypes.create_string_buffer(n.value)
        lib.nvrtcGetCUBIN(prog, buf)
        cubin = buf.raw
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return ptx.value.decode(), cubin, log.value.decode(), dt


@pytest.mark.parametrize("arch", [f"sm_{a}" for a in ARCHS] + ["compute_90"])
def test_nvrtc_compiles_every_arch(emu, arch):
    lib = _nvrtc()
    if lib is None:
        pytest.skip("libnvrtc not loadable (CPU-only torch wheel or no CUDA toolkit): NVRTC check skipped")
    ptx, cubin, log, dt = nvrtc_compile(lib, arch)
    entries = set(emu.ic_emu_entries().decode().split())
    found = {line.split()[-1].rstrip("(") for line in ptx.splitlines() if ".entry" in line}
    assert found == entries
    assert ".local" not in ptx, "local memory in the PTX"
    if arch.startswith("sm_"):
        assert cubin[:4] == b"\x7fELF"
        # ptxas -v: every entry without stack frame or spills
        props = [line for line in log.splitlines() if "spill stores" in line]
        assert len(props) == len(entries), log
        assert all(" 0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in p for p in props), log
    print(f"NVRTC {arch}: {dt:.2f} s, PTX {len(ptx)} chars, CUBIN {len(cubin)} bytes")


def test_cuda_kernels_module_without_a_driver():
    """ic_networks.cuda_kernels on a machine without a GPU: unavailable with a reason, the switch
    cannot turn on what is not there, the route context restores it, errors name the argument."""
    from ic_networks import cuda_kernels as ck

    if torch.cuda.is_available() or ck.available():
        pytest.skip("a CUDA driver is present")
    assert ck.unavailable_reason() and not ck.enabled()
    with ck.enabled_route():
        assert not ck.enabled()  # nothing to enable
    assert not ck.enabled() and ck.calls() == 0
    with pytest.raises(RuntimeError, match="unavailable"):
        ck.warm_up(0)
    with pytest.raises(RuntimeError, match="device: no CUDA device"):
        ck.warm_up()
    with pytest.raises(ValueError, match="device: expected a CUDA device, got 'cpu'"):
        ck.warm_up("cpu")
    with pytest.raises(ValueError, match="device: expected a CUDA ordinal >= 0"):
        ck.warm_up(-1)
    with pytest.raises(TypeError, match="device: expected a CUDA device"):
        ck.warm_up(1.5)
    with pytest.raises(TypeError, match="on: expected a bool"):
        ck.set_enabled(1)
    # a CPU op call never counts as a fused step
    x = torch.randn(1, 2, 5, 5)
    with ck.enabled_route():
        ic_conv2d(x, torch.randn(3, 2, 3, 3), torch.randn(3, 2, 1, 1), torch.zeros(3), 0.5, None, 1, 1)
    assert ck.calls() == 0


def test_import_without_libcuda():
    """`import ic_networks` works on a machine without a CUDA driver (this one, in CI)."""
    code = "import ic_networks, torch; print(torch.cuda.is_available())"
    r = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- the Rust launch path, emulated

EMULATED_CHILD = r'''
import ctypes, json, os, sys
import torch
from ic_networks import cuda_kernels as ck
from ic_networks.functional import ic_conv2d
from ic_networks.reference import ic_conv2d_reference
assert ck.available(), ck.unavailable_reason()
warm = ck.warm_up(0)
res = {"warm_up": warm, "cases": 0, "max_fwd": 0.0, "max_bwd": 0.0, "max_vs_libtorch": 0.0}
if sys.argv[1:] == ["warm-up-only"]:
    print("RESULT " + json.dumps(res))
    sys.exit(0)
from cuda_fused_compose import module_on_both_routes, op_on_route as run_op
rel = lambda u, v: ((u.double().reshape(v.shape) - v.double()).abs().max() / v.double().abs().max()).item()


for k, s, p, d, dt, cl, groups in [
        (3, 1, 1, 1, torch.float64, False, 1), (3, 1, 1, 1, torch.float64, True, 1), (5, 1, 2, 1, torch.float64, False, 1),
        (3, 1, 2, 2, torch.float64, True, 1), (1, 1, 0, 1, torch.float64, False, 1), (3, 2, 1, 1, torch.float64, False, 1),
        (3, 2, 1, 1, torch.float64, True, 1), (5, 2, 2, 1, torch.float64, False, 2), (3, 1, 1, 1, torch.float64, False, 2),
        (3, 1, 1, 1, torch.float32, True, 1), (3, 2, 1, 1, torch.float32, False, 1)]:
    g = torch.Generator().manual_seed(k * 100 + s * 10 + p)
    r = lambda *sh: torch.randn(*sh, generator=g, dtype=torch.float64)
    x, w, wa = r(2, 8, 9, 10), r(12, 8 // groups, k, k) * 0.3, r(12, 8 // groups, 1, 1) * 0.3
    b1, b2, a = r(12), r(12), torch.tensor(0.7, dtype=torch.float64)
    t = [v.to(dt) for v in (x, w, wa, b1, a, b2)]
    if cl:
        t[0] = t[0].contiguous(memory_format=torch.channels_last)
    leaves = [v.detach().double().requires_grad_() for v in t]
    ref = ic_conv2d_reference(*leaves[:5], leaves[5], s, p, d, groups)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    rg = torch.autograd.grad(ref, leaves, grad)
    gr = grad.to(dt)
    if cl:
        gr = gr.contiguous(memory_format=torch.channels_last)
    out, gs, steps = run_op(t, s, p, d, groups, gr, True)
    # forward + collision backward, + the strided P-path backward
    assert steps == (2 if s == 1 else 3), (k, s, steps)
    tol = 1e-12 if dt == torch.float64 else 1e-5
    ef = rel(out, ref)
    eb = max(rel(u, v) for u, v in zip(gs, rg))
    assert ef < tol and eb < 100 * tol, (k, s, p, d, dt, cl, groups, ef, [rel(u, v) for u, v in zip(gs, rg)])
    # the same op with the switch off: the libtorch route, no fused step
    out0, gs0, steps0 = run_op(t, s, p, d, groups, gr, False)
    assert steps0 == 0
    res["max_vs_libtorch"] = max(res["max_vs_libtorch"], rel(out, out0), *(rel(u, v) for u, v in zip(gs, gs0)))
    if dt == torch.float64:
        res["max_fwd"], res["max_bwd"] = max(res["max_fwd"], ef), max(res["max_bwd"], eb)
    res["cases"] += 1
    # only some gradients asked for (W' and alpha: the P path without dx)
    if dt == torch.float64:
        _, gp, _ = run_op(t, s, p, d, groups, gr, True, wants=(False, False, True, False, True, False))
        assert gp[0] is None and gp[1] is None and gp[3] is None and gp[5] is None
        assert rel(gp[2], rg[2]) < 1e-10 and rel(gp[4], rg[4]) < 1e-10
ck.set_enabled(True)
# gradcheck through the public op on the fused route (float64)
for s, cl in [(1, False), (1, True), (2, False), (2, True)]:
    g = torch.Generator().manual_seed(90 + s)
    r = lambda *sh: torch.randn(*sh, generator=g, dtype=torch.float64)
    xg = r(1, 2, 5, 6)
    if cl:
        xg = xg.contiguous(memory_format=torch.channels_last)
    ts = [xg, r(3, 2, 3, 3) * 0.4, r(3, 2, 1, 1) * 0.4, r(3) * 0.3, torch.tensor(0.8, dtype=torch.float64), r(3) * 0.3]
    ts = [v.requires_grad_() for v in ts]
    f = lambda x, w, wa, b1, al, b2: ic_conv2d(x, w, wa, b1, al, b2, s, 1, 1, 1)
    before = ck.calls()
    assert torch.autograd.gradcheck(f, ts, eps=1e-6, atol=1e-7, rtol=1e-5)
    assert ck.calls() > before
# inference (no relu_z) and fp16 through the whole layer
h = [v.detach().half() for v in (x, w, wa, b1, a, b2)]
before = ck.calls()
with torch.no_grad():
    out = ic_conv2d(*h[:5], h[5], 1, 1, 1, 1)
assert out.dtype == torch.float16 and ck.calls() == before + 1
ref = ic_conv2d_reference(*[v.double() for v in h[:5]], h[5].double(), 1, 1, 1, 1)
assert rel(out, ref) < 1e-2, rel(out, ref)
# CPU bf16 autocast (the op's autocast kernel, then the fused route in bfloat16) vs the switched-off op
from ic_networks.nn import IcConv2d
for s in (1, 2):
    torch.manual_seed(11)
    m = IcConv2d(8, 8, 3, stride=s, padding=1, alpha=0.5)
    with torch.no_grad():
        m.adjust_bias.normal_(0, 0.3)
    got = module_on_both_routes(m, torch.randn(2, 8, 10, 10), "cpu", torch.bfloat16)
    (d1, o1, g1, n1), (d0, o0, g0, n0) = got[True], got[False]
    assert d1 == d0 == torch.bfloat16 and n1 == (2 if s == 1 else 3) and n0 == 0, (d1, d0, n1, n0)
    assert rel(o1, o0) < 2e-2 and all(rel(u, v) < 5e-2 for u, v in zip(g1, g0)), [rel(u, v) for u, v in zip(g1, g0)]
res["launches"] = ctypes.CDLL(os.environ["IC_NETWORKS_LIBCUDA"]).fake_libcuda_launches()
print("RESULT " + json.dumps(res))
'''


def build_fake_driver(out_dir: Path, stub: bool = False, name: str = "libcuda.so") -> Path:
    """tests/cuda_emu/fake_libcuda.cpp built as `out_dir/name` (the toolkit-style stub with `stub`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [shutil.which("g++"), "-std=c++17", "-O1", "-shared", "-fPIC", str(ROOT / "tests" / "cuda_emu" / "fake_libcuda.cpp"),
           "-o", str(out_dir / name)]
    subprocess.run(cmd + (["-DIC_FAKE_STUB"] if stub else []), check=True, capture_output=True, text=True)
    return out_dir / name


def emulated_env(core, fake: Path | None, cache: Path, **extra) -> dict:
    """The environment of a child process that runs the op on the stand-in driver `fake`."""
    env = dict(os.environ, IC_NETWORKS_CUDA_EMULATION="1", IC_NETWORKS_KERNEL_CACHE_DIR=str(cache),
               PYTHONPATH=os.pathsep.join(p for p in [str(Path(core.__file__).parents[1]), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")] if p))
    env.pop("IC_NETWORKS_CUDA_SYNC_CHECK", None)
    if fake is not None:
        env["IC_NETWORKS_LIBCUDA"] = str(fake)
    env.update(extra)
    return env


def run_child(code: str, env: dict, *args: str) -> dict:
    import json

    r = subprocess.run([os.sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(r.stdout.split("RESULT ", 1)[1])


def needs_emulated_driver():
    core = _core()
    if not hasattr(core, "cuda_fused_libraries"):
        pytest.skip("this _core build has no fused CUDA route")
    if _nvrtc() is None:
        pytest.skip("libnvrtc not loadable: the emulated launch path needs NVRTC to build the module")
    if shutil.which("g++") is None:
        pytest.skip("no g++")
    return core


@pytest.fixture(scope="module")
def fake_driver(tmp_path_factory):
    """(the stand-in libcuda, a kernel cache already holding its module): for the tests below that
    do not test the cold compile."""
    core = needs_emulated_driver()
    d = tmp_path_factory.mktemp("fake_driver")
    fake = build_fake_driver(d / "driver")
    run_child(EMULATED_CHILD, emulated_env(core, fake, d / "cache"), "warm-up-only")
    return fake, d / "cache"


def test_rust_launch_path_under_emulated_driver(tmp_path):
    """The op's fused CUDA route end to end without a GPU: a stand-in libcuda
    (tests/cuda_emu/fake_libcuda.cpp) runs cuLaunchKernel under the host emulation, and
    IC_NETWORKS_CUDA_EMULATION=1 makes CPU tensors take the CUDA backend. The public op
    (`functional.ic_conv2d`, autograd, the C++ op library) with the switch on is compared with the
    float64 oracle and with the same op switched off (the libtorch route), gradchecked, and counted
    (`cuda_fused_calls`) so that a silent fallback fails. That also covers availability, the
    primary-context push/pop (the stand-in refuses launches without it), NVRTC compile + disk cache,
    kernel-parameter packing, the accumulating GEMM, groups and the strided path."""
    core = needs_emulated_driver()
    fake = build_fake_driver(tmp_path / "driver")
    env = emulated_env(core, fake, tmp_path / "cache")
    runs = [run_child(EMULATED_CHILD, env, *args) for args in ([], ["warm-up-only"])]  # the second reads the disk cache
    first, second = runs
    assert first["warm_up"] == {"compute_capability": 90, "cubin": True, "from_cache": False, "replaced": None}
    assert second["warm_up"]["from_cache"] is True
    assert first["launches"] > 20
    assert first["max_vs_libtorch"] < 1e-4
    print(f"\nemulated driver: {first['cases']} op cases, {first['launches']} launches; max rel. error vs float64 "
          f"oracle: forward {first['max_fwd']:.2e}, backward {first['max_bwd']:.2e}; vs the libtorch route "
          f"{first['max_vs_libtorch']:.2e}")


GLUE_CHILD = r'''
import ctypes, json, os, sys
import torch
from ic_networks import _core, cuda_kernels as ck
from ic_networks.functional import ic_conv2d
fake = ctypes.CDLL(os.environ["IC_NETWORKS_LIBCUDA"])
what = sys.argv[1]
res = {}
if what == "reject-cubin":
    fake.fake_libcuda_set(0, 0, 1)
res["warm_up"] = ck.warm_up(0)
res["image"] = fake.fake_libcuda_last_image()
res["sync_check"] = _core.cuda_fused_sync_check()
g = torch.Generator().manual_seed(0)
x = torch.randn(1, 4, 6, 7, generator=g, dtype=torch.float64)
w, wa = torch.randn(4, 4, 3, 3, generator=g, dtype=torch.float64), torch.randn(4, 4, 1, 1, generator=g, dtype=torch.float64)
b1, b2 = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
ck.set_enabled(True)


def op(alpha, grad=True):
    ts = [t.clone().requires_grad_(grad) for t in (x, w, wa, b1)]
    a = alpha.clone().requires_grad_(grad)
    out = ic_conv2d(*ts, a, b2, 1, 1, 1, 1)
    if grad:
        out.sum().backward()
    return out


def last_alpha():
    v = ctypes.c_double()
    has_ptr = fake.fake_libcuda_last_alpha(ctypes.byref(v))
    return v.value, has_ptr


if what in ("alpha", "reject-cubin"):
    # a 0-d CPU alpha (the op accepts one) reaches both kernels by value, in the accumulation dtype
    for alpha in (torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float32), torch.tensor([0.25])):
        before = ck.calls()
        op(alpha)
        assert ck.calls() == before + 2
        res.setdefault("alpha", []).append(last_alpha())
    # while the stream is capturing (after the warm-up): no compile, no copy, no sync; the launch goes through
    fake.fake_libcuda_set(1, 0, 0)
    syncs, n = fake.fake_libcuda_syncs(), fake.fake_libcuda_launches()
    with torch.no_grad():
        op(torch.tensor(0.5, dtype=torch.float64), grad=False)
    res["capture"] = [fake.fake_libcuda_launches() - n, fake.fake_libcuda_syncs() - syncs, last_alpha()]
    fake.fake_libcuda_set(0, 0, 0)
elif what == "fault":
    # the stream reports an illegal address from the next launch on
    syncs = fake.fake_libcuda_syncs()
    fake.fake_libcuda_set(0, fake.fake_libcuda_launches() + 1, 0)
    try:
        with torch.no_grad():
            op(torch.tensor(0.5, dtype=torch.float64), grad=False)
        res["error"] = None
    except RuntimeError as e:
        res["error"] = str(e)
    res["syncs"] = fake.fake_libcuda_syncs() - syncs
elif what == "capture-sync":
    # under the sync check, a capturing stream is never synchronised
    fake.fake_libcuda_set(1, 0, 0)
    syncs = fake.fake_libcuda_syncs()
    with torch.no_grad():
        op(torch.tensor(0.5, dtype=torch.float64), grad=False)
    res["syncs"] = fake.fake_libcuda_syncs() - syncs
print("RESULT " + json.dumps(res))
'''


def test_cpu_alpha_is_passed_by_value(fake_driver, tmp_path):
    """A 0-d CPU alpha is read on the host and passed to the forward and backward kernels by value
    (no copy to the device per call, nothing that breaks capture); the stand-in driver records what
    each launch got. A launch on a capturing stream (after warm-up) goes through, unsynchronised."""
    fake, cache = fake_driver
    r = run_child(GLUE_CHILD, emulated_env(_core(), fake, cache), "alpha")
    assert r["warm_up"]["from_cache"] is True
    (a64, p64), (a32, p32), (a1, p1) = r["alpha"]
    assert (p64, p32, p1) == (0, 0, 0)
    assert a64 == 0.7 and a32 == float(torch.tensor(0.3, dtype=torch.float32)) and a1 == 0.25
    launched, synced, (a, p) = r["capture"]
    assert launched == 1 and synced == 0 and (a, p) == (0.5, 0)


def test_sync_check_names_the_failing_kernel(fake_driver):
    """IC_NETWORKS_CUDA_SYNC_CHECK=1: a kernel that faults (the stand-in's stream reports an
    illegal address after it) is an error at its own launch, naming it; without the switch the op
    returns and the fault would surface at some later op. A capturing stream is never synchronised."""
    fake, cache = fake_driver
    core = _core()
    on = run_child(GLUE_CHILD, emulated_env(core, fake, cache, IC_NETWORKS_CUDA_SYNC_CHECK="1"), "fault")
    assert on["sync_check"] is True
    assert on["error"] is not None, on
    assert "ic_fwd_box_f64" in on["error"] and "illegal memory access" in on["error"], on["error"]
    assert "IC_NETWORKS_CUDA_SYNC_CHECK" in on["error"]
    off = run_child(GLUE_CHILD, emulated_env(core, fake, cache), "fault")
    assert off["sync_check"] is False and off["error"] is None and off["syncs"] == 0
    cap = run_child(GLUE_CHILD, emulated_env(core, fake, cache, IC_NETWORKS_CUDA_SYNC_CHECK="1"), "capture-sync")
    assert cap["syncs"] == 0


def test_rejected_cubin_is_recompiled_then_ptx(fake_driver, tmp_path):
    """A cached CUBIN the driver rejects (here: a file with an ELF magic but no valid image) is
    replaced by a fresh compilation, which also repairs the cache entry; a driver that rejects every
    CUBIN gets the same compilation's PTX, and the op runs on it."""
    fake, cache = fake_driver
    core = _core()
    mine = tmp_path / "cache"
    shutil.copytree(cache, mine)
    (entry,) = [f for f in mine.iterdir() if f.suffix == ".cubin"]
    entry.write_bytes(b"\x7fELF" + b"\0" * 60)
    r = run_child(GLUE_CHILD, emulated_env(core, fake, mine), "warm-up")
    w = r["warm_up"]
    assert w["cubin"] is True and w["from_cache"] is False and r["image"] == 1
    assert "rejected the cached CUBIN" in w["replaced"] and "recompiled" in w["replaced"], w
    assert entry.read_bytes() == (cache / entry.name).read_bytes()  # the entry is a good CUBIN again
    r = run_child(GLUE_CHILD, emulated_env(core, fake, mine), "reject-cubin")
    w = r["warm_up"]
    assert w["cubin"] is False and r["image"] == 2, r
    assert "rejected the cached CUBIN" in w["replaced"] and "loaded its PTX" in w["replaced"], w
    assert [p for _, p in r["alpha"]] == [0, 0, 0]  # and the op ran on the PTX module


LIBS_CHILD = r'''
import json
from ic_networks import _core
print("RESULT " + json.dumps({"libraries": _core.cuda_fused_libraries(), "reason": _core.cuda_fused_unavailable_reason()}))
'''


def test_libraries_are_loaded_by_full_path(fake_driver, tmp_path):
    """With a toolkit-style stub `libcuda.so` and a broken `libnvrtc.so` first on the loader path,
    the driver's own `libcuda.so.1` and torch's NVRTC are the ones loaded, and reported by full path;
    with only the stub there, the reason names it."""
    fake, cache = fake_driver
    core = _core()
    decoys, real = tmp_path / "decoys", tmp_path / "driver"
    build_fake_driver(decoys, stub=True)
    (decoys / "libnvrtc.so").write_bytes(fake.read_bytes())  # loads, but has no NVRTC entry points
    build_fake_driver(real, name="libcuda.so.1")
    env = emulated_env(core, None, cache, LD_LIBRARY_PATH=os.pathsep.join([str(decoys), str(real), os.environ.get("LD_LIBRARY_PATH", "")]))
    env.pop("IC_NETWORKS_LIBCUDA", None)
    env.pop("IC_NETWORKS_LIBNVRTC", None)
    r = run_child(LIBS_CHILD, env)
    assert r["reason"] is None, r
    assert r["libraries"]["libcuda"] == str((real / "libcuda.so.1").resolve()), r
    nvrtc = Path(r["libraries"]["nvrtc"])
    assert nvrtc.is_absolute() and nvrtc.name.startswith("libnvrtc.so.") and decoys not in nvrtc.parents, r
    torch_site = Path(torch.__file__).resolve().parents[1]
    if (torch_site / "nvidia").is_dir():
        assert torch_site in nvrtc.parents, (nvrtc, torch_site)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(decoys), os.environ.get("LD_LIBRARY_PATH", "")])
    r = run_child(LIBS_CHILD, env)
    if not Path("/proc/driver/nvidia/version").exists():  # no real driver to find after the stub
        assert "stub" in r["reason"] and str(decoys / "libcuda.so") in r["reason"], r


def test_gpu_check_runs_on_the_stand_in_driver(fake_driver, tmp_path):
    """scripts/gpu_check.sh end to end without a GPU (GPU_CHECK_EMULATE=1, the stand-in driver):
    stages 1 and 2 pass, each leaves exactly one tarball in OUTDIR with every log and JSON and the
    summary (the kernel cache stays outside it), the second info step hits the disk cache, and a
    deadline too short for any step skips them all, fails, and still packs the tarball."""
    import json
    import tarfile

    fake, _ = fake_driver
    out, work = tmp_path / "out", tmp_path / "work"
    # caps and deadline scaled for a loaded CPU machine (the GPU's are the script's defaults)
    env = dict(os.environ, GPU_CHECK_EMULATE="1", IC_NETWORKS_LIBCUDA=str(fake), GPU_CHECK_WORK=str(work),
               GPU_CHECK_CAP_SCALE="8", GPU_CHECK_DEADLINE="2400")
    for k in ("STAGE", "STEPS", "IC_NETWORKS_CUDA_SYNC_CHECK"):
        env.pop(k, None)
    script = ROOT / "scripts" / "gpu_check.sh"

    def run(stage, **extra):
        r = subprocess.run(["bash", str(script), str(out)], capture_output=True, text=True, timeout=2400,
                           env=dict(env, STAGE=str(stage), **extra))
        with tarfile.open(out / f"gpu_check-stage{stage}.tar.gz") as t:
            files = {m.name.split("/", 1)[1]: m for m in t.getmembers() if m.isfile()}
            read = lambda n: t.extractfile(files[n]).read().decode()  # noqa: E731
            return r, files, {n: read(n) for n in files if n.endswith((".log", ".json", ".tsv", ".txt"))}

    r, files, text = run(1)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "gpu_check stage 1: PASSED" in r.stdout
    assert {"info-cold.log", "info-cached.log", "gpu-tests.log", "gpu-tests.xml", "bench-n256.log", "bench-n256.json",
            "steps.tsv", "summary.txt", "nvidia-smi.txt"} <= set(files), sorted(files)
    assert not any("kernel-cache" in n for n in files)
    assert "'from_cache': False" in text["info-cold.log"] and "'from_cache': True" in text["info-cached.log"]
    assert "'libcuda': '" + str(fake.resolve()) in text["info-cold.log"], text["info-cold.log"]
    assert json.loads(text["bench-n256.json"])["emulated"] is True
    assert [line.split("\t")[0] for line in text["steps.tsv"].splitlines()[1:]] == ["info-cold", "info-cached", "gpu-tests", "bench-n256"]

    r, files, text = run(2)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    rows = json.loads(text["kernels.json"])["rows"]
    assert len(rows) == 4 and all(row["fwd_ms"] > 0 and row["bwd_ms"] > 0 for row in rows), rows
    assert "sanitizer\t-\t0\tSKIPPED (needs a GPU)" in text["steps.tsv"]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check-stage1.tar.gz", "gpu_check-stage2.tar.gz"]

    r, files, text = run(1, GPU_CHECK_DEADLINE="20")
    assert r.returncode == 1, r.stdout[-4000:]
    assert "gpu_check stage 1: FAILED" in r.stdout
    assert text["steps.tsv"].count("SKIPPED (deadline") == 4, text["steps.tsv"]
