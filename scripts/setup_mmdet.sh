#!/usr/bin/env bash
# Optional mmdetection stack for ic_networks.integrations.mmdet, idempotent.
# Versions are the ones verified with torch 2.13.0 (the traps are in docs/design.md): mmengine 0.10.7, mmcv 2.1.0
# compiled from source with its C++ ops (mmdet.models needs mmcv._ext), mmdet 3.3.0, setuptools<82
# (mmcv's setup.py and mmengine's `mmdet::` config paths import pkg_resources).
# mmcv is built once into a wheel directory ($IC_WHEEL_DIR/torch-<version>, default .whl/, git-ignored;
# cache it in CI) and installed from there, so a second set-up takes seconds instead of ~10 minutes
# (measured: 15 s from the cached wheel; the build itself took 125 min on this 2-core machine under a
# load of 7-14, 67 min of CPU; about 9 min on a quiet machine).
# Skips everything when `import mmcv._ext, mmdet` already works in the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${IC_VENV:-.venv}
WHEELS=${IC_WHEEL_DIR:-$PWD/.whl}
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if ! python -c "import sys, torch; sys.exit(tuple(int(p) for p in torch.__version__.split('.')[:2]) >= (2, 14))"; then
  echo "error: mmcv 2.1.0 compiles its ops with -std=c++17, which torch $(python -c 'import torch; print(torch.__version__)') refuses (C++20 headers); mmdetection needs torch 2.13.0 (docs/detection.md)" >&2
  exit 1
fi

if python -c "import mmcv._ext, mmdet" >/dev/null 2>&1; then
  echo "== mmdetection already installed: $(python -c 'import mmcv, mmdet; print("mmcv", mmcv.__version__, "mmdet", mmdet.__version__)')"
  exit 0
fi
start=$(date +%s)
echo "== installing setuptools<82, ninja, wheel, mmengine==0.10.7"
python -m pip install -q "setuptools<82" ninja wheel "mmengine==0.10.7"
# mmcv's runtime requirements (the wheel is installed with --no-deps, so pip never touches torch).
python -m pip install -q addict numpy packaging Pillow pyyaml yapf opencv-python
# The compiled ops link this torch, and mmcv compiles CUDA ops only where torch sees a GPU (or
# FORCE_CUDA=1; that needs nvcc): cache the wheel per torch version and kind.
CACHE="$WHEELS/$(python -c 'import os, torch; print(f"torch-{torch.__version__}-" + ("cuda" if torch.cuda.is_available() or os.getenv("FORCE_CUDA") == "1" else "cpu"))')"
install_cached() {
  ls "$CACHE"/mmcv-2.1.0-*.whl >/dev/null 2>&1 &&
    python -m pip install -q --no-deps --force-reinstall "$CACHE"/mmcv-2.1.0-*.whl &&
    python -c "import mmcv._ext" >/dev/null 2>&1
}
if ! install_cached; then
  rm -rf "$CACHE" && mkdir -p "$CACHE"
  echo "== building mmcv==2.1.0 with ops into $CACHE (about 10 min on 2 quiet cores)"
  b=$(date +%s)
  # ninja must be on PATH (else one file at a time); no isolation, or the ops are silently skipped.
  PATH="$VIRTUAL_ENV/bin:$PATH" MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} \
    python -m pip wheel -q --no-deps --no-build-isolation "mmcv==2.1.0" -w "$CACHE"
  echo "== mmcv build took $(( $(date +%s) - b )) s"
  install_cached || { echo "error: the mmcv wheel built in $CACHE does not import mmcv._ext" >&2; exit 1; }
fi
echo "== installing mmdet==3.3.0"
python -m pip install -q "mmdet==3.3.0"
python -c "import mmcv._ext, mmdet, mmcv; print('mmcv', mmcv.__version__, 'mmdet', mmdet.__version__)"
echo "== mmdetection set-up took $(( $(date +%s) - start )) s"
