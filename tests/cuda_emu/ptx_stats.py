"""What the fused kernels cost per output, read from NVRTC's output without a GPU: for each float32
and bfloat16 entry, ptxas' registers, spills and stack (`-Xptxas -v`, sm_90), and for the box
kernels the PTX instructions executed per output element at 64@56 and 512@7 (3x3, padding 1,
stride 1, N = 256), NCHW and channels_last, with the launch plan's tile and threads per block
(`plan_tile`, `threads_for` in src/cuda/fused/params.rs, mirrored below).

    python tests/cuda_emu/ptx_stats.py [SOURCE.cu] [--arch 90] [--threads N] [--dtype f32] [-D NAME=VALUE ...]

How the count is taken: a small PTX interpreter (`Thread`) runs every thread of one block with a
full tile (the second row of tiles, first column) through the entry, with the kernel parameters
the launch code would pass, and counts every PTX instruction it executes (set-up, halo, outputs,
reduction; a predicated-off instruction counts too). The block's total over its valid outputs is
the figure. Global loads return a constant and the shared memory is per thread, which is enough:
the kernels' control flow depends only on indices, sizes and parameters. PTX is what NVRTC emits
before ptxas: a `div` or an `ld.param` is one PTX instruction but not one machine instruction, so
this measures the code's work, not cycles. Compiled PTX is cached in the temp dir.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import re
import struct
import sys
from pathlib import Path

from params import BoxParams, Strides  # beside this script
from ptx_interp import entries, entry_params, run_block

ROOT = Path(__file__).resolve().parents[2]
KERNEL = ROOT / "src" / "cuda" / "kernels" / "collision.cu"


def load_nvrtc():
    import torch

    site = Path(torch.__file__).resolve().parents[1]
    for cand in sorted(glob.glob(str(site / "nvidia" / "*" / "lib" / "libnvrtc.so.*"))) + [
        "libnvrtc.so.13",
        "libnvrtc.so.12",
    ]:
        if "builtins" in cand:
            continue
        try:
            for b in glob.glob(str(Path(cand).parent / "libnvrtc-builtins.so*")):
                ctypes.CDLL(b)
            return ctypes.CDLL(cand)
        except OSError:
            continue
    raise SystemExit("libnvrtc not loadable")


def compile_cu(src: str, arch: int, defines=()) -> tuple[str, str]:
    import hashlib
    import tempfile

    key = hashlib.sha1(repr((src, arch, tuple(defines))).encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"ic_ptx_stats_{key}"
    if cache.with_suffix(".ptx").exists() and cache.with_suffix(".log").exists():
        return cache.with_suffix(".ptx").read_text(), cache.with_suffix(".log").read_text()
    ptx, log = _compile_cu(src, arch, defines)
    cache.with_suffix(".ptx").write_text(ptx)
    cache.with_suffix(".log").write_text(log)
    return ptx, log


def _compile_cu(src: str, arch: int, defines=()) -> tuple[str, str]:
    lib = load_nvrtc()
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"collision.cu", 0, None, None) == 0
    opts = [f"--gpu-architecture=sm_{arch}".encode(), b"-std=c++17", b"-default-device", b"-Xptxas", b"-v"]
    opts += [f"-D{d}".encode() for d in defines]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    if rc != 0:
        raise SystemExit(log.value.decode())
    lib.nvrtcGetPTXSize(prog, ctypes.byref(n))
    ptx = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetPTX(prog, ptx)
    return ptx.value.decode(), log.value.decode()


def resources(log: str) -> dict:
    """entry -> (registers, spill stores + loads bytes, stack bytes, shared bytes) from ptxas -v."""
    out, cur = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = m.group(1)
            out[cur] = {"registers": None, "spills": 0, "stack": 0, "smem": 0}
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            out[cur]["stack"] = int(m.group(1))
            out[cur]["spills"] = int(m.group(2)) + int(m.group(3))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            out[cur]["registers"] = int(m.group(1))
            m2 = re.search(r"(\d+) bytes smem", line)
            out[cur]["smem"] = int(m2.group(1)) if m2 else 0
    return out


ELEM_BYTES = {"f32": 4, "f64": 8, "f16": 2, "bf16": 2}


def pow2ceil(v):
    return 1 << max(0, int(v - 1).bit_length())


def plan_tile(c, rows, cols, cl, elem_bytes=4):
    """params.rs `plan_tile`."""
    if cl:
        return min(min(max(32 // elem_bytes, 8), 16), pow2ceil(c)), min(8, pow2ceil(rows)), min(16, pow2ceil(cols))
    tw = min(32, max(8, pow2ceil(cols)))
    th = min(max(512 // tw, 1), pow2ceil(rows))
    return min(max(256 // (th * tw), 1), pow2ceil(c)), th, tw


def threads_for(tile):
    """params.rs `threads_for`: about four outputs per thread, at least a row of the tile's
    channels x columns and 64 threads, at most 256."""
    tc, th, tw = tile
    return min(256, max(tc * tw, 64, pow2ceil(tc * th * tw) // 4))


def strides(n, c, h, w, cl):
    return Strides(h * w * c, 1, w * c, c) if cl else Strides(c * h * w, h * w, w, 1)


# (name, C, H=W, N) of the measured layers: 3x3, padding 1, stride 1
SHAPES = [("64@56", 64, 56, 256), ("512@7", 512, 7, 256)]


def measure(ptx: str, suffix: str = "f32", threads: int = 0) -> list:
    """Executed PTX instructions per output element of the forward and backward kernels, summed
    over every thread of one block with a full tile (the tile's second row of tiles), for each
    shape and layout. `values` of pointer parameters are distinct fake addresses, scalars 0.5."""
    rows = []
    names = {n for n in entries(ptx)}
    for kname, bwd in ((f"ic_fwd_box_{suffix}", False), (f"ic_bwd_box_{suffix}", True)):
        if kname not in names:
            continue
        for shape, c, hw, n in SHAPES:
            for cl in (False, True):
                rws, cls_ = (max(hw, hw + 1), max(hw, hw + 1)) if bwd else (hw, hw)
                tc, th, tw = plan_tile(c, rws, cls_, cl, ELEM_BYTES[suffix])
                tiles_c, tiles_h, tiles_w = -(-c // tc), -(-rws // th), -(-cls_ // tw)
                st = strides(n, c, hw, hw, cl)
                p = BoxParams(
                    n,
                    c,
                    hw,
                    hw,
                    hw,
                    hw,
                    3,
                    3,
                    1,
                    1,
                    1,
                    1,
                    tc,
                    th,
                    tw,
                    tiles_c,
                    tiles_h,
                    tiles_w,
                    int(cl),
                    st,
                    st,
                    st,
                    st,
                )
                values, nptr, prev = [], 0, ""
                for ptype, _pname, arr in entry_params(ptx, kname):
                    if arr:
                        raw = bytes(p)
                        values.append(raw + bytes(max(0, int(arr) - len(raw))))
                    elif ptype in ("u64", "b64"):
                        nptr += 1
                        # alpha's pointer right after its value: null (alpha by value)
                        values.append(struct.pack("<Q", 0 if prev in ("f32", "f64") else 0x10000000 * nptr))
                    elif ptype == "f32":
                        values.append(struct.pack("<f", 0.5))
                    elif ptype == "f64":
                        values.append(struct.pack("<d", 0.5))
                    else:
                        values.append(struct.pack("<i", 0))
                    prev = ptype
                row_tile = 1 if tiles_h > 1 else 0
                block = (row_tile * tiles_w, 0, 0)
                grid = (tiles_h * tiles_w, tiles_c, n)
                nt = threads if threads else threads_for((tc, th, tw))
                total, _ = run_block(ptx, kname, values, block, grid, nt)
                r0, c0 = row_tile * th, 0
                valid = tc * max(0, min(th, hw - r0)) * max(0, min(tw, hw - c0))
                rows.append(
                    {
                        "kernel": kname,
                        "shape": shape,
                        "layout": "channels_last" if cl else "NCHW",
                        "tile": (tc, th, tw),
                        "threads": nt,
                        "instr_per_output": total / valid,
                        "block_instr": total,
                    }
                )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("source", nargs="?", default=str(KERNEL))
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("-D", dest="defines", action="append", default=[])
    ap.add_argument(
        "--threads", type=int, default=0, help="threads per block (default: launch.rs's choice; 256 for the old plan)"
    )
    ap.add_argument("--dtype", default="f32", choices=sorted(ELEM_BYTES), help="the box kernels' storage type")
    a = ap.parse_args()
    ptx, log = compile_cu(Path(a.source).read_text(), a.arch, a.defines)
    res = resources(log)
    print(f"| entry (sm_{a.arch}) | registers | spills (B) | stack (B) | static smem (B) |")
    print("|---|---|---|---|---|")
    for name in sorted(res):
        if not (name.endswith("_f32") or name.endswith("_bf16")):
            continue
        r = res[name]
        print(f"| `{name}` | {r['registers']} | {r['spills']} | {r['stack']} | {r['smem']} |")
    print()
    print("| kernel | shape | layout | tile (TC, TH, TW) | threads | PTX instructions executed per output |")
    print("|---|---|---|---|---|---|")
    for r in measure(ptx, a.dtype, threads=a.threads):
        print(
            f"| `{r['kernel']}` | {r['shape']} | {r['layout']} | {r['tile']} | {r['threads']} "
            f"| {r['instr_per_output']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
