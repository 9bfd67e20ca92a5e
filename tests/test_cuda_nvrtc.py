"""The fused CUDA kernels compiled through NVRTC for every supported arch (skipped when libnvrtc is
not loadable): the entry names and the absence of local-memory spills; and the Python side on a
machine without a CUDA driver.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from cuda_emu.host import _nvrtc, build_emu
from ic_networks.functional import ic_conv2d

ROOT = Path(__file__).resolve().parents[1]
KERNEL = ROOT / "src" / "cuda" / "kernels" / "collision.cu"


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    return build_emu(tmp_path_factory)


# --------------------------------------------------------------------------- NVRTC (no GPU needed)

ARCHS = [75, 80, 86, 89, 90, 100, 120]


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
