"""The fused kernels' parameter structs (collision.cu's IcStrides, IcBoxParams, IcBoxsumParams,
IcReduceParams) as ctypes, for the host emulation (host.py) and ptx_stats.py: the one Python copy of
the layout that src/cuda/fused/launch.rs mirrors.
"""

import ctypes


class Strides(ctypes.Structure):
    _fields_ = [(n, ctypes.c_longlong) for n in ("n", "c", "h", "w")]


class BoxParams(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_int)
        for n in (
            "N",
            "C",
            "H",
            "W",
            "Ho",
            "Wo",
            "kh",
            "kw",
            "ph",
            "pw",
            "dh",
            "dw",
            "TC",
            "TH",
            "TW",
            "tiles_c",
            "tiles_h",
            "tiles_w",
            "cl",
        )
    ] + [(n, Strides) for n in ("s_box", "s_a", "s_b", "s_r")]


class BoxsumParams(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_int)
        for n in ("N", "C", "H", "W", "Ho", "Wo", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "mode", "cl")
    ] + [(n, Strides) for n in ("s_in", "s_out")]


class ReduceParams(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int) for n in ("N", "C", "TC", "tiles_c", "tiles_sp", "dalpha")]
