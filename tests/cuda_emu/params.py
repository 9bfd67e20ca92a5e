"""The fused kernels' parameter structs (collision.cu's IcStrides, IcBoxParams, IcBoxsumParams,
IcReduceParams) as ctypes, for the host emulation (host.py) and ptx_stats.py. They are built from
the declarations in collision.cu, the one source of the layout (build.rs generates the Rust
structs from the same lines); tests/test_cuda_params.py checks every offset against g++'s.
"""

import ctypes
import re
from pathlib import Path

KERNEL = Path(__file__).resolve().parents[2] / "src" / "cuda" / "kernels" / "collision.cu"
_C_TYPES = {"int": ctypes.c_int, "ic_i64": ctypes.c_longlong}


def _fields(source: str, name: str, known: dict) -> list:
    """`[(field, ctype)]` of `struct name { type a, b;  // ... }` in `source`."""
    body = re.search(r"\nstruct " + name + r" \{\n(.*?)\n\};", source, re.S)
    if body is None:
        raise LookupError(f"{KERNEL}: no struct {name}")
    fields = []
    for line in body.group(1).splitlines():
        decl = line.split("//")[0].strip().rstrip(";")
        if not decl:
            continue
        ty, names = decl.split(" ", 1)
        ctype = _C_TYPES.get(ty) or known.get(ty)
        if ctype is None:
            raise LookupError(f"{KERNEL}: struct {name}: unexpected field type {ty}")
        fields += [(n.strip(), ctype) for n in names.split(",")]
    return fields


def _structs() -> dict:
    source = KERNEL.read_text()
    known: dict = {}
    for name in ("IcStrides", "IcBoxParams", "IcBoxsumParams", "IcReduceParams"):
        known[name] = type(name, (ctypes.Structure,), {"_fields_": _fields(source, name, known)})
    return known


_S = _structs()
Strides = _S["IcStrides"]
BoxParams = _S["IcBoxParams"]
BoxsumParams = _S["IcBoxsumParams"]
ReduceParams = _S["IcReduceParams"]
