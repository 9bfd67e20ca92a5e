"""The kernel parameter structs' layout: the ctypes structs the emulation tests pass to the kernels
(tests/cuda_emu/params.py, built from collision.cu's declarations) have every field at the offset
g++ gives it compiling the same source (offsetof), and the same size.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from cuda_emu import params

ROOT = Path(__file__).resolve().parents[1]
STRUCTS = {
    "IcStrides": params.Strides,
    "IcBoxParams": params.BoxParams,
    "IcBoxsumParams": params.BoxsumParams,
    "IcReduceParams": params.ReduceParams,
}


def c_layout(tmp_path: Path) -> dict:
    """`{(struct, field): offset}` and `{(struct, None): size}` from collision.cu compiled as host C++."""
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no g++")
    lines = [
        f'#include "{ROOT}/src/cuda/kernels/ic_emu.h"',
        f'#include "{ROOT}/src/cuda/kernels/collision.cu"',
        "#include <cstddef>",
        "#include <cstdio>",
        "int main() {",
    ]
    for c_name, cls in STRUCTS.items():
        lines.append(f'    std::printf("{c_name} - %zu\\n", sizeof({c_name}));')
        for field, _ in cls._fields_:
            lines.append(f'    std::printf("{c_name} {field} %zu\\n", offsetof({c_name}, {field}));')
    lines.append("}")
    src, exe = tmp_path / "layout.cpp", tmp_path / "layout"
    src.write_text("\n".join(lines) + "\n")
    subprocess.run([cxx, "-std=c++17", "-O0", str(src), "-o", str(exe)], check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    layout = {}
    for line in out.splitlines():
        struct, field, value = line.split()
        layout[(struct, None if field == "-" else field)] = int(value)
    return layout


def test_ctypes_structs_match_collision_cu(tmp_path):
    want = c_layout(tmp_path)
    got = {}
    for c_name, cls in STRUCTS.items():
        got[(c_name, None)] = ctypes.sizeof(cls)
        for field, _ in cls._fields_:
            got[(c_name, field)] = getattr(cls, field).offset
    assert got == want
