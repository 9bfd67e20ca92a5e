#!/usr/bin/env bash
# Set-up of a fresh machine, idempotent: the Fashion-MNIST Debian package, a virtualenv (.venv)
# with torch==$IC_TORCH (default 2.15.0, the newest torch that passes the whole suite; the tested
# range is 2.13-2.15, docs/install.md) and its torchvision, and a release build of the Rust core
# against that torch, installed editable. Re-running it only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${IC_VENV:-.venv}
TORCH=${IC_TORCH:-2.15.0}
case "$TORCH" in   # the torchvision that goes with it (0.29.2 declares torch>=2.14.0; checked on 2.15)
  2.13.*) TORCHVISION=0.28.0 ;;
  2.14.* | 2.15.*) TORCHVISION=0.29.2 ;;
  *) TORCHVISION=${IC_TORCHVISION:?IC_TORCHVISION: the torchvision version for torch $TORCH} ;;
esac
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -f "$FMNIST" ]; then
  echo "== installing the Fashion-MNIST dataset (Debian package dataset-fashion-mnist)"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo (Rust >= 1.80) is needed to build the extension; install it with rustup" >&2
  exit 1
fi
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
echo "== installing torch==$TORCH, torchvision==$TORCHVISION and the build/test tools"
python -m pip install -q "torch==$TORCH" "torchvision==$TORCHVISION" "maturin>=1.7,<2"
# torch-sys does not rebuild tch's C++ wrapper when another torch is installed into the same
# environment (build.rs refuses such a stale wrapper): clean it when the torch changed.
TARGET=${CARGO_TARGET_DIR:-target}
built_for="$TARGET/.ic-networks-torch"
now=$(python -c "import torch; print(torch.__version__)")
if [ -d "$TARGET" ] && [ "$(cat "$built_for" 2>/dev/null)" != "$now" ]; then
  echo "== $TARGET was built for torch $(cat "$built_for" 2>/dev/null || echo '(unknown)'), now $now: cargo clean --release -p torch-sys"
  cargo clean --release -q -p torch-sys
fi
echo "== building the Rust core (release) and installing ic-networks (editable)"
# --no-build-isolation: the build must see this env's torch (see README, "Install from source").
start=$(date +%s)
# The cargo feature cuda-emulation: the test hook that runs the CUDA route without a GPU
# (tests/test_cuda_launch_path.py); release wheels (scripts/lib.sh) are built without it.
MATURIN_PEP517_ARGS="--features cuda-emulation" python -m pip install -q --no-build-isolation -e ".[test]"
mkdir -p "$TARGET" && echo "$now" > "$built_for"
echo "== build + install took $(( $(date +%s) - start )) s"
python -c "import ic_networks, torch; print('ic_networks', ic_networks.__version__, 'on torch', torch.__version__)"
