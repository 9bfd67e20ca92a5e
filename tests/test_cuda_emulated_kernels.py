"""The fused CUDA kernels (src/cuda/kernels/collision.cu) under the host emulation (tests/cuda_emu/host.py):
the composed IC layer over a geometry sweep against the float64 oracle and the CPU kernels, half
types, the half conversions, the barrier check and the empty batch. The sweep also runs small tiles
so that every geometry crosses tile borders.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cuda_emu.host import (
    CASES,
    _core,
    build_emu,
    case_id,
    emu_bwd_box,
    emu_fwd_box,
    emu_layer,
    make_case,
    maxrel,
    oracle,
    plan_tile,
    threads_for,
)
from ic_networks.reference import boxsum_reference

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    return build_emu(tmp_path_factory)


SWEEP_STATS = {"cases": 0, "max_fwd": 0.0, "max_bwd": 0.0}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_emulated_layer_matches_float64_oracle(emu, case):
    k, pad, dil, stride, c, n, hw, cl = case
    groups = 1 if c % 2 else (2 if c >= 2 else 1)
    t = make_case(
        n,
        c,
        c + 1 if groups == 1 else c,
        hw,
        k,
        (pad, pad),
        (dil, dil),
        (stride, stride),
        groups,
        torch.float64,
        cl,
        seed=hash(case) & 0xFFFF,
    )
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
        out, rz, g = emu_layer(
            emu, x, w, wa, b1, b2, alpha, st, pd, dl, groups, grad, tile=tile, nt=nt, order=order, alpha_ptr=by_ptr
        )
        assert maxrel(out, ref_out) < 1e-12, f"forward (tile {tile}, {nt} threads)"
        z = F.conv2d(x, w, b2, st, pd, dl, groups)
        assert maxrel(rz, (ref_out - z) / 0.7) < 1e-10
        for name, ref in ref_g.items():
            assert maxrel(g[name].reshape(ref.shape), ref) < 1e-11, (
                f"d{name} (tile {tile}, {nt} threads, order {order})"
            )
        results.append((out, g))
        SWEEP_STATS["max_fwd"] = max(SWEEP_STATS["max_fwd"], maxrel(out, ref_out))
        SWEEP_STATS["max_bwd"] = max(
            SWEEP_STATS["max_bwd"], *(maxrel(g[k_].reshape(r.shape), r) for k_, r in ref_g.items())
        )
    # the same tile in both thread/block orders: bit-identical (no race, deterministic sums)
    (o1, g1), (o2, g2) = results[1], results[2]
    assert torch.equal(o1, o2)
    for name in g1:
        assert torch.equal(g1[name], g2[name]), name
    SWEEP_STATS["cases"] += 1


def test_sweep_size():
    assert len(CASES) >= 60, len(CASES)
    if SWEEP_STATS["cases"]:
        print(
            f"\nemulation sweep: {SWEEP_STATS['cases']} geometries x 3 (tile, threads, order) runs; "
            f"max rel. error vs float64 oracle: forward {SWEEP_STATS['max_fwd']:.2e}, "
            f"backward {SWEEP_STATS['max_bwd']:.2e}"
        )


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


@pytest.mark.parametrize("stride,cl", [(1, False), (1, True), (2, False), (2, True)])
@pytest.mark.parametrize("k,pad,dil", [((3, 3), 1, 1), ((5, 5), 2, 1), ((3, 3), 2, 2), ((1, 1), 0, 1)])
def test_emulated_float32_matches_cpu_kernels(emu, stride, cl, k, pad, dil):
    _core()  # the registered ops load with it
    x, w, wa, b1, b2, alpha = make_case(
        2, 8, 8, (11, 10), k, (pad, pad), (dil, dil), (stride, stride), 1, torch.float32, cl, seed=11
    )
    st, pd, dl = [stride, stride], [pad, pad], [dil, dil]
    ops = torch.ops.ic_networks  # the CPU kernels behind the registered ops
    cpu_out, cpu_rz = ops.ic_conv2d_forward(x, w, wa, b1, alpha, b2, st, pd, dl, 1)
    grad = torch.empty_like(cpu_out).normal_(generator=torch.Generator().manual_seed(12))
    cpu_g = ops.ic_conv2d_backward(grad, x, w, wa, b1, alpha, cpu_rz, True, st, pd, dl, 1, [True] * 6)
    out, rz, g = emu_layer(emu, x, w, wa, b1, b2, alpha, st, pd, dl, 1, grad)
    assert maxrel(out, cpu_out) < 2e-6
    assert maxrel(rz, cpu_rz) < 2e-5
    for name, cg in zip(["x", "weight", "adjust_weight", "adjust_bias", "alpha", "bias"], cpu_g):
        assert maxrel(g[name].reshape(cg.shape), cg) < 1e-4, name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cl,c", [(False, 8), (True, 8), (True, 24)])
def test_emulated_half_types(emu, dtype, cl, c):
    """Half inputs, float32 math, one rounding per stored value: compared with the same formula
    evaluated in float32 and rounded by torch. channels_last with C = 24: the launch plan's
    16-channel tile of 2-byte types, the second channel tile partly past C."""
    if cl and c == 24:
        assert plan_tile(c, 9, 9, True, 0, 2) == (16, 8, 16)
    x, w, wa, b1, b2, alpha = make_case(2, c, c, (9, 9), (3, 3), (1, 1), (1, 1), (1, 1), 1, dtype, cl, seed=5)
    y = F.conv2d(x.float(), w.float(), b2.float(), 1, 1).to(dtype)
    q = F.conv2d(x.float(), wa.float()).to(dtype)
    if cl:
        y, q = (t.contiguous(memory_format=torch.channels_last) for t in (y, q))
    shift = b1.float() - b2.float()
    out, rz = emu_fwd_box(emu, y, q, shift, float(alpha), (3, 3), (1, 1), (1, 1))
    p = boxsum_reference(q.float(), (3, 3), 1, 1)
    z32 = torch.relu(y.float() - p + shift.view(1, -1, 1, 1))
    ref = (y.float() + alpha.float() * z32).to(dtype)
    # P's float32 sum order differs from conv's: allow one unit in the last place of the result.
    ulp = 2.0 ** (-10 if dtype == torch.float16 else -7)
    assert ((out.float() - ref.float()).abs() <= ulp * ref.float().abs().clamp_min(1)).all()
    assert ((rz.float() - z32.to(dtype).float()).abs() <= ulp * z32.abs().clamp_min(1)).all()
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(6)).to(dtype)
    if cl:
        grad = grad.contiguous(memory_format=torch.channels_last)
    gy, G, db1, db2, da = emu_bwd_box(emu, grad, rz, float(alpha), (9, 9), (3, 3), (1, 1), (1, 1))
    gz = torch.where(rz.float() > 0, alpha.float() * grad.float(), torch.zeros(()))
    assert torch.equal(gy, (grad.float() + gz).to(dtype))
    Gref = torch.nn.grad.conv2d_input(G.shape, torch.ones(c, 1, 3, 3), gz, 1, 1, 1, c)
    assert ((G.float() - Gref).abs() <= ulp * Gref.abs().clamp_min(1)).all()
    assert torch.allclose(db1, gz.sum((0, 2, 3)), rtol=1e-5, atol=1e-4)
    assert torch.allclose(db2, grad.float().sum((0, 2, 3)), rtol=1e-5, atol=1e-4)
    assert torch.allclose(da, (grad.float() * rz.float()).sum(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("c", [6, 12])
def test_small_nchw_images_take_several_channels(emu, c):
    """A 7 x 7 NCHW image gets a tile of four channels and 64 threads (params.rs `plan_tile`), the
    last channel tile partly past C for C = 6: the layer against the float64 oracle, and
    bit-identical in both thread orders."""
    assert plan_tile(c, 7, 7, False, 0) == (4, 8, 8) and threads_for((4, 8, 8)) == 64
    one = (1, 1)
    x, w, wa, b1, b2, alpha = make_case(2, c, c, (7, 7), (3, 3), one, one, one, 1, torch.float64, False, seed=c)
    grad = torch.randn(2, c, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ref_out, ref_g = oracle(x, w, wa, b1, b2, alpha, one, one, one, 1, grad)
    runs = [emu_layer(emu, x, w, wa, b1, b2, alpha, one, one, one, 1, grad, nt=0, order=o) for o in (0, 1)]
    for out, _, g in runs:
        assert maxrel(out, ref_out) < 1e-12
        for name, ref in ref_g.items():
            assert maxrel(g[name].reshape(ref.shape), ref) < 1e-11, name
    assert torch.equal(runs[0][0], runs[1][0])
    for name in runs[0][2]:
        assert torch.equal(runs[0][2][name], runs[1][2][name]), name


def test_half_conversions_match_torch(emu):
    """The software float <-> half / bfloat16 conversions (the emulation's; the GPU uses cvt
    instructions, and the software bfloat16 rounding below sm_80) agree with torch bit for bit on
    normals, subnormals, ties, overflow, inf and NaN."""
    gen = torch.Generator().manual_seed(7)
    vals = torch.cat(
        [torch.randn(20000, generator=gen) * s for s in (1e-8, 1e-6, 1e-4, 1, 100, 6e4, 1e5, 1e38)]
        + [
            torch.tensor(
                [
                    0.0,
                    -0.0,
                    65504.0,
                    65519.0,
                    65520.0,
                    float("inf"),
                    -float("inf"),
                    float("nan"),
                    2.0**-24,
                    2.0**-25,
                    3 * 2.0**-26,
                    2.0**-14,
                    1 + 2.0**-11,
                    1 + 3 * 2.0**-11,
                ]
            )
        ]
    )
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
    src.write_text(
        f'#include "{ROOT}/src/cuda/kernels/ic_emu.h"\n'
        "__global__ void bad() { if (threadIdx.x < 3) __syncthreads(); }\n"
        "int main() { ic_emu::launch(dim3(1), dim3(8), 0, 0, [] { bad(); }); }\n"
    )
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
