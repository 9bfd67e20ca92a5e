#!/usr/bin/env bash
# Optional mmdetection stack for ic_networks.integrations.mmdet, idempotent: mmengine 0.10.7, mmcv 2.1.0
# compiled from source with its C++ ops (mmdet.models needs mmcv._ext), mmdet 3.3.0, setuptools<82
# (mmcv's setup.py and mmengine's `mmdet::` config paths import pkg_resources). Traps: docs/detection.md.
# mmcv 2.1.0's setup.py hard-codes `-std=c++17`, and torch >= 2.14's headers require C++20: the sdist is
# unpacked and the flag is replaced by `-std=c++20` before building (as the FreeBSD port misc/py-mmcv and
# vLLM's CI do), with any patch in scripts/patches/mmcv-2.1.0/ applied too. One recipe for every supported torch.
# mmcv is built once into a wheel directory ($IC_WHEEL_DIR/torch-<version>-<cpu|cuda>, default .whl/,
# git-ignored; cache it in CI) and installed from there, so a second set-up takes seconds (measured: 15 s
# from the cached wheel; the build is about 17 min on 2 quiet cores with an empty ccache).
# Skips everything when `import mmcv._ext, mmdet` already works in the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${IC_VENV:-.venv}
WHEELS=${IC_WHEEL_DIR:-$PWD/.whl}
PATCHES=$PWD/scripts/patches/mmcv-2.1.0
# shellcheck disable=SC1091
. "$VENV/bin/activate"

if python -c "import mmcv._ext, mmdet" >/dev/null 2>&1; then
  echo "== mmdetection already installed: $(python -c 'import mmcv, mmdet; print("mmcv", mmcv.__version__,
    "mmdet", mmdet.__version__)')"
  exit 0
fi
start=$(date +%s)
echo "== installing setuptools<82, ninja, wheel, mmengine==0.10.7"
python -m pip install -q "setuptools<82" ninja wheel "mmengine==0.10.7"
# mmcv's runtime requirements (the wheel is installed with --no-deps, so pip never touches torch).
python -m pip install -q addict numpy packaging Pillow pyyaml yapf opencv-python
# The compiled ops link this torch, and mmcv compiles CUDA ops only where torch sees a GPU (or
# FORCE_CUDA=1; that needs nvcc): cache the wheel per torch version and kind.
CACHE="$WHEELS/$(python -c 'import os, torch; print(f"torch-{torch.__version__}-"
  + ("cuda" if torch.cuda.is_available() or os.getenv("FORCE_CUDA") == "1" else "cpu"))')"
install_cached() {
  ls "$CACHE"/mmcv-2.1.0-*.whl >/dev/null 2>&1 &&
    python -m pip install -q --no-deps --force-reinstall "$CACHE"/mmcv-2.1.0-*.whl &&
    python -c "import mmcv._ext" >/dev/null 2>&1
}
if ! install_cached; then
  rm -rf "$CACHE" && mkdir -p "$CACHE"
  src=$(mktemp -d)
  trap 'rm -rf "$src"' EXIT
  echo "== mmcv==2.1.0 sdist, built with -std=c++20 (about 17 min on 2 quiet cores) into $CACHE"
  # --no-build-isolation: pip prepares the sdist's metadata with setup.py, which imports torch and pkg_resources.
  python -m pip download -q --no-deps --no-binary :all: --no-build-isolation "mmcv==2.1.0" -d "$src"
  tar -xzf "$src"/mmcv-2.1.0.tar.gz -C "$src"
  sed -i 's/-std=c++17/-std=c++20/g' "$src/mmcv-2.1.0/setup.py"
  if grep -q -- '-std=c++17' "$src/mmcv-2.1.0/setup.py" || ! grep -q -- '-std=c++20' "$src/mmcv-2.1.0/setup.py"; then
    echo "error: could not switch mmcv 2.1.0's setup.py to -std=c++20" >&2; exit 1
  fi
  for p in "$PATCHES"/*.patch; do
    [ -e "$p" ] || continue
    echo "== applying scripts/patches/mmcv-2.1.0/$(basename "$p")"
    patch -d "$src/mmcv-2.1.0" -p1 --forward --quiet < "$p"
  done
  b=$(date +%s)
  # Python's own CFLAGS carry -g: debug info for 77 files of torch templates took half the compile
  # time (50 s instead of 22 s a file on a cold machine). An environment CFLAGS replaces Python's, so
  # it repeats them with -g0 appended.
  cflags="$(python -c 'import sysconfig; print(sysconfig.get_config_var("CFLAGS") or "")') -g0"
  # ninja must be on PATH (else one file at a time); no isolation, or the ops are silently skipped.
  PATH="$VIRTUAL_ENV/bin:$PATH" MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} CFLAGS="$cflags" \
    python -m pip wheel -q --no-deps --no-build-isolation "$src/mmcv-2.1.0" -w "$CACHE"
  echo "== mmcv build took $(( $(date +%s) - b )) s"
  install_cached || { echo "error: the mmcv wheel built in $CACHE does not import mmcv._ext" >&2; exit 1; }
fi
echo "== installing mmdet==3.3.0"
python -m pip install -q "mmdet==3.3.0"
python -c "import mmcv._ext, mmdet, mmcv; print('mmcv', mmcv.__version__, 'mmdet', mmdet.__version__)"
echo "== mmdetection set-up took $(( $(date +%s) - start )) s"
