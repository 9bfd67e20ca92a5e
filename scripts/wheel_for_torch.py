"""Makes a built ic-networks wheel a wheel *for one torch minor* (used by scripts/build_wheels.sh).

    python scripts/wheel_for_torch.py WHEEL OUTDIR

The Rust core links libtorch's C++ API, so a wheel works only beside the torch minor it was compiled
against (the one installed in the build environment). This rewrites the wheel's metadata to say so:

* the version gets a local label naming that torch minor, 0.1.0 -> 0.1.0+torch2.15 (PEP 440; pip
  treats ``ic-networks==0.1.0`` as matching it, the way torch's own ``2.15.0+cpu`` works);
* ``Requires-Dist: torch`` becomes that minor, ``torch>=2.15,<2.16``, and torchvision from the one
  installed beside it at build time (the tested one) up to the release made for that torch
  (torchvision 0.N goes with torch 2.(N-15)), e.g. ``torchvision>=0.29,<0.31``, so that pip refuses
  the wheel beside another torch instead of replacing the user's torch (a resolver error naming torch);
* the library's run path is only ``$ORIGIN/../torch/lib`` (torch beside it in site-packages), not the
  build machine's torch (with patchelf, which auditwheel needs too).

The torch version is read from the built library's stamp (the one ``import ic_networks`` checks), so
it is the torch that was really compiled against. Prints the path of the new wheel.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata

MARKER = b"ic-networks-built-against-torch="


def built_torch(core: bytes) -> tuple[int, int]:
    at = core.find(MARKER)
    if at < 0:
        raise SystemExit("error: the wheel's _core library has no torch stamp (not built by build.rs?)")
    m = re.match(rb"(\d+)\.(\d+)", core[at + len(MARKER) : at + len(MARKER) + 32])
    if not m:
        raise SystemExit("error: unreadable torch stamp in the wheel's _core library")
    return int(m.group(1)), int(m.group(2))


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def set_rpath(library: bytes) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "_core.so")
        with open(path, "wb") as f:
            f.write(library)
        subprocess.run(["patchelf", "--set-rpath", "$ORIGIN/../torch/lib", path], check=True)
        with open(path, "rb") as f:
            return f.read()


def rewrite_metadata(text: str, version: str, torch_mm: tuple[int, int]) -> str:
    major, minor = torch_mm
    tv_major, tv_minor = (int(p) for p in metadata.version("torchvision").split(".")[:2])
    torchvision = f">={tv_major}.{tv_minor},<0.{minor + 16}"
    out = []
    for line in text.split("\n"):
        if line.startswith("Version: "):
            line = f"Version: {version}"
        elif re.match(r"Requires-Dist: torch\s*[<>=!~]", line):
            line = f"Requires-Dist: torch>={major}.{minor},<{major}.{minor + 1}"
        elif re.match(r"Requires-Dist: torchvision\s*[<>=!~]", line):
            line = f"Requires-Dist: torchvision{torchvision}"
        out.append(line)
    return "\n".join(out)


def main(wheel: str, outdir: str) -> str:
    name = os.path.basename(wheel)
    dist, version, rest = name.split("-", 2)
    with zipfile.ZipFile(wheel) as zin:
        entries = [(info, zin.read(info)) for info in zin.infolist()]
    is_core = re.compile(r"/_core[^/]*\.so$").search
    (core,) = [data for info, data in entries if is_core(info.filename)]
    torch_mm = built_torch(core)
    base = version.split("+")[0]
    new_version = f"{base}+torch{torch_mm[0]}.{torch_mm[1]}"
    old_info, new_info = f"{dist}-{version}.dist-info/", f"{dist}-{new_version}.dist-info/"
    os.makedirs(outdir, exist_ok=True)
    target = os.path.join(outdir, f"{dist}-{new_version}-{rest}")
    records = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zout:
        for info, data in entries:
            path = info.filename
            if path.startswith(old_info):
                path = new_info + path[len(old_info) :]
            if path == new_info + "RECORD":
                continue
            if is_core(path):
                data = set_rpath(data)
            if path == new_info + "METADATA":
                data = rewrite_metadata(data.decode(), new_version, torch_mm).encode()
            new = zipfile.ZipInfo(path, date_time=info.date_time)
            new.external_attr, new.compress_type = info.external_attr, zipfile.ZIP_DEFLATED
            zout.writestr(new, data)
            records.append(record_line(path, data))
        records.append(f"{new_info}RECORD,,")
        zout.writestr(new_info + "RECORD", "\n".join(records) + "\n")
    return target


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(f"usage: {sys.argv[0]} WHEEL OUTDIR")
    print(main(sys.argv[1], sys.argv[2]))
