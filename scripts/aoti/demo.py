"""torch.export + AOTInductor with the IC convolution, run from C++.

    python scripts/aoti/demo.py [workdir]

Exports a small IC model, compiles it to an AOTInductor package (``aoti_compile_and_package``),
checks the package from Python (``aoti_load_package``), then builds ``runner.cpp`` with the C++
compiler against the installed libtorch and runs the package from C++ (the runner loads the
ic_networks op library itself). Prints the graph's ops and the C++ result; exit code 0 on a match.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time

import torch
from torch import nn
from torch.utils import cpp_extension

import ic_networks as icn


def main() -> int:
    work = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "aoti-demo")
    os.makedirs(work, exist_ok=True)
    torch.manual_seed(0)
    model = nn.Sequential(
        icn.IcConv2d(3, 8, 3, padding=1, alpha=0.5),
        nn.ReLU(),
        icn.IcConv2d(8, 4, 3, stride=2, padding=1, alpha=0.3),
    ).eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        want = model(x)
        ep = torch.export.export(model, (x,))
    print("exported ops:", sorted({str(n.target) for n in ep.graph.nodes if n.op == "call_function"}))
    t0 = time.time()
    package = torch._inductor.aoti_compile_and_package(ep, package_path=os.path.join(work, "ic.pt2"))
    print(f"AOTInductor package {package} in {time.time() - t0:.0f} s")
    with torch.no_grad():
        torch.testing.assert_close(torch._inductor.aoti_load_package(package)(x), want)
    print("Python aoti_load_package: matches eager")
    x.numpy().tofile(os.path.join(work, "x.bin"))
    want.numpy().tofile(os.path.join(work, "want.bin"))

    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    exe = os.path.join(work, "runner")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runner.cpp")
    cmd = [
        os.environ.get("CXX", "c++"),
        "-O1",
        "-std=c++20",
        src,
        "-o",
        exe,
        *[f"-I{p}" for p in cpp_extension.include_paths()],
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}",
        f"-L{torch_lib}",
        f"-Wl,-rpath,{torch_lib}",
        "-ltorch",
        "-ltorch_cpu",
        "-lc10",
        "-ldl",
    ]
    t0 = time.time()
    subprocess.run(cmd, check=True)
    print(f"built {exe} in {time.time() - t0:.0f} s")
    libpython = os.path.join(sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY"))
    r = subprocess.run(
        [
            exe,
            package,
            icn._core.__file__,
            libpython,
            os.path.join(work, "x.bin"),
            os.path.join(work, "want.bin"),
            *map(str, x.shape),
        ]
    )
    print("C++ runner exit code", r.returncode)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
