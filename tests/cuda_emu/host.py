"""The fused CUDA kernels' host emulation, shared by the tests of src/cuda/kernels/collision.cu.

The kernel source compiled as host C++ with src/cuda/kernels/ic_emu.h (the `emu` fixture: g++, into
a temp dir) runs under a sequential grid emulation (every block's threads as fibers between
barriers, in ascending and in descending order). Here: that library, the kernels' parameter structs
(ctypes, checked against collision.cu's layout by the tests), the launch plan mirrored from
src/cuda/fused/launch.rs, the composed layer on the emulated kernels, the float64 oracle and the
geometry sweep.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cuda_emu.params import BoxParams, BoxsumParams, ReduceParams, Strides
from ic_networks.reference import ic_conv2d_reference

ROOT = Path(__file__).resolve().parents[2]
KERNEL = ROOT / "src" / "cuda" / "kernels" / "collision.cu"
EMU_API = ROOT / "tests" / "cuda_emu" / "emu_api.cpp"


# --------------------------------------------------------------------------- emulation library


def build_emu(tmp_path_factory):
    """The kernel source built as a host library (the tests' `emu` fixture)."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the kernel emulation")
    out = tmp_path_factory.mktemp("emu") / "ic_emu.so"
    subprocess.run(
        [cxx, "-std=c++17", "-O1", "-Wall", "-Werror", "-shared", "-fPIC", str(EMU_API), "-o", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    lib = ctypes.CDLL(str(out))
    lib.ic_emu_launch.restype = ctypes.c_long
    lib.ic_emu_launch.argtypes = [
        ctypes.c_char_p,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_void_p),
    ]
    lib.ic_emu_entries.restype = ctypes.c_char_p
    return lib


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


def plan_tile(c, rows, cols, cl, nt, elem_bytes=4):
    """Default tile (params.rs `plan_tile`): channels_last 8 x 16 pixels of as many channels as fill
    32 bytes, at least 8 (16 for 2-byte types; fewer when C is small), NCHW up to 512 pixels shaped
    after the image, and as many channels as fill 256 outputs for images under 16 x 16."""
    if cl:
        tc = min(min(max(32 // elem_bytes, 8), 16), pow2ceil(c))
        return tc, min(8, pow2ceil(rows)), min(16, pow2ceil(cols))
    tw = min(32, max(8, pow2ceil(cols)))
    th = min(max(512 // tw, 1), pow2ceil(rows))
    return min(max(256 // (th * tw), 1), pow2ceil(c)), th, tw


def threads_for(tile):
    """params.rs `threads_for`: about four outputs per thread, at least a row of the tile's
    channels x columns and 64 threads, at most 256."""
    tc, th, tw = tile
    return min(256, max(tc * tw, 64, pow2ceil(tc * th * tw) // 4))


def box_params(n, c, h, w, ho, wo, kh, kw, ph, pw, dh, dw, cl, tile, bwd, t_box, t_a, t_b, t_r):
    tc, th, tw = tile
    rows, cols = (max(ho, h + ph), max(wo, w + pw)) if bwd else (ho, wo)
    p = BoxParams(
        n,
        c,
        h,
        w,
        ho,
        wo,
        kh,
        kw,
        ph,
        pw,
        dh,
        dw,
        tc,
        th,
        tw,
        -(-c // tc),
        -(-rows // th),
        -(-cols // tw),
        cl,
        strides(t_box),
        strides(t_a),
        strides(t_b),
        strides(t_r),
    )
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
    tile = tile or plan_tile(c, ho, wo, cl, nt, y.element_size())
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


def emu_bwd_box(
    lib,
    grad,
    rz,
    alpha,
    in_hw,
    k,
    pad,
    dil,
    need_gy=True,
    tile=None,
    nt=256,
    order=0,
    alpha_ptr=False,
    need_dalpha=True,
):
    """gy, G = boxsum^T(gz) on the input grid, and (db1, db2, dalpha) in the accumulation dtype."""
    n, c, ho, wo = grad.shape
    h, w = in_hw
    cl = is_cl(grad)
    tile = tile or plan_tile(c, max(ho, h + pad[0]), max(wo, w + pad[1]), cl, nt, grad.element_size())
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
    launch(
        lib,
        f"ic_bwd_box_{SUFFIX[grad.dtype]}",
        (tiles_sp, p.tiles_c, n),
        nt,
        smem,
        order,
        grad,
        rz,
        gy,
        G,
        av,
        ap,
        part,
        p,
    )
    sums = torch.full((c, 3), float("nan"), dtype=a)
    rp = ReduceParams(n, c, tile[0], p.tiles_c, tiles_sp, int(need_dalpha))
    launch(lib, f"ic_reduce_{SUFFIX[a]}", (c, 1, 1), max(nt, 32), 3 * max(nt, 32) * a.itemsize, order, part, sums, rp)
    # d alpha: the per-channel values added in a fixed order (launch.rs: torch's sum)
    return gy, G, sums[:, 0], sums[:, 1], (sums[:, 2].sum() if need_dalpha else None)


def boxsum_params(x_shape, o_shape, k, s, pad, dil, mode, cl, t_in, t_out):
    return BoxsumParams(
        x_shape[0],
        x_shape[1],
        x_shape[2],
        x_shape[3],
        o_shape[2],
        o_shape[3],
        k[0],
        k[1],
        s[0],
        s[1],
        pad[0],
        pad[1],
        dil[0],
        dil[1],
        mode,
        cl,
        strides(t_in),
        strides(t_out),
    )


def emu_boxsum(lib, x, k, s, pad, dil, order=0, nt=128, blocks=7):
    n, c, h, w = x.shape
    ho = (h + 2 * pad[0] - dil[0] * (k[0] - 1) - 1) // s[0] + 1
    wo = (w + 2 * pad[1] - dil[1] * (k[1] - 1) - 1) // s[1] + 1
    cl = is_cl(x)
    out = torch.empty((n, c, ho, wo), dtype=x.dtype).contiguous(
        memory_format=torch.channels_last if cl else torch.contiguous_format
    )
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


def emu_layer(
    lib, x, w, wa, b1, b2, alpha, stride, pad, dil, groups, grad, tile=None, nt=256, order=0, alpha_ptr=False
):
    """IC forward + backward, the convolutions by torch and the memory-bound part by the emulated
    kernels, as src/cuda/fused composes them (stride 1: Q = W'x, fused box; else S, P, k = 1)."""
    k = tuple(w.shape[2:])
    y = F.conv2d(x, w, b2, stride, pad, dil, groups)
    shift = b1 - b2
    if tuple(stride) == (1, 1):
        q = F.conv2d(x, wa, None, 1, 0, 1, groups)
        out, rz = emu_fwd_box(lib, y, q, shift, alpha, k, pad, dil, tile=tile, nt=nt, order=order, alpha_ptr=alpha_ptr)
        gy, G, db1, db2, da = emu_bwd_box(
            lib, grad, rz, alpha, x.shape[2:], k, pad, dil, tile=tile, nt=nt, order=order, alpha_ptr=alpha_ptr
        )
        dx = torch.nn.grad.conv2d_input(x.shape, w, gy, stride, pad, dil, groups)
        dx -= torch.nn.grad.conv2d_input(x.shape, wa, G, 1, 0, 1, groups)
        dwa = -torch.nn.grad.conv2d_weight(x, wa.shape, G, 1, 0, 1, groups)
    else:
        s = emu_boxsum(lib, x, k, stride, pad, dil, order=order)
        p = F.conv2d(s, wa, None, 1, 0, 1, groups)
        out, rz = emu_fwd_box(
            lib, y, p, shift, alpha, (1, 1), (0, 0), (1, 1), tile=tile, nt=nt, order=order, alpha_ptr=alpha_ptr
        )
        gy, gz, db1, db2, da = emu_bwd_box(
            lib,
            grad,
            rz,
            alpha,
            y.shape[2:],
            (1, 1),
            (0, 0),
            (1, 1),
            tile=tile,
            nt=nt,
            order=order,
            alpha_ptr=alpha_ptr,
        )
        dx = torch.nn.grad.conv2d_input(x.shape, w, gy, stride, pad, dil, groups)
        ds = torch.nn.grad.conv2d_input(s.shape, wa, gz, 1, 0, 1, groups)
        emu_boxsum_t(
            lib,
            ds.contiguous(memory_format=torch.channels_last if is_cl(dx) else torch.contiguous_format),
            dx,
            k,
            stride,
            pad,
            dil,
            mode=1,
            order=order,
        )
        dwa = -torch.nn.grad.conv2d_weight(s, wa.shape, gz, 1, 0, 1, groups)
    dw = torch.nn.grad.conv2d_weight(x, w.shape, gy, stride, pad, dil, groups)
    return out, rz, dict(x=dx, weight=dw, adjust_weight=dwa, adjust_bias=db1, alpha=da, bias=db2)


def oracle(x, w, wa, b1, b2, alpha, stride, pad, dil, groups, grad):
    leaves = [t.detach().double().requires_grad_() for t in (x, w, wa, b1, alpha, b2)]
    out = ic_conv2d_reference(*leaves[:5], leaves[5], stride, pad, dil, groups)
    gs = torch.autograd.grad(out, leaves, grad.double(), allow_unused=True)
    names = ["x", "weight", "adjust_weight", "adjust_bias", "alpha", "bias"]
    return out.detach(), {k: (v if v is not None else torch.zeros_like(leaf)) for k, v, leaf in zip(names, gs, leaves)}


def maxrel(a, b):
    a, b = a.double(), b.double()
    if a.numel() == 0:
        return 0.0
    return ((a - b).abs().max() / (b.abs().max() + 1e-12)).item()


CASES = []
for i, (k, pad, dil, stride, c, n, hw, cl) in enumerate(
    itertools.product(
        [(1, 1), (3, 3), (5, 5), (3, 5)],
        [0, 1, 2],
        [1, 2],
        [1, 2],
        [1, 3, 8, 17],
        [0, 1, 2],
        [(7, 9), (12, 12)],
        [False, True],
    )
):
    # a deterministic subsample of the product (every value of every axis appears many times)
    if (i * 7919) % 23 != 0:
        continue
    if dil * (k[0] - 1) + 1 > hw[0] + 2 * pad or dil * (k[1] - 1) + 1 > hw[1] + 2 * pad:
        continue
    CASES.append((k, pad, dil, stride, c, n, hw, cl))


def case_id(case):
    k, pad, dil, stride, c, n, hw, cl = case
    return f"k{k[0]}x{k[1]}-p{pad}-d{dil}-s{stride}-c{c}-n{n}-{hw[0]}x{hw[1]}-{'cl' if cl else 'nchw'}"


def _core():
    try:
        from ic_networks import _core
    except ImportError as e:  # pragma: no cover
        pytest.skip(f"ic_networks._core not built: {e}")
    return _core


def _nvrtc():
    for name in ("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None
