#!/usr/bin/env bash
# Set-up of a fresh machine, idempotent: the Fashion-MNIST Debian package, a virtualenv (.venv)
# with torch==2.13.0 (the libtorch that tch 0.26 links), and a release build of the Rust core,
# installed editable. Re-running it only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${IC_VENV:-.venv}
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
echo "== installing torch==2.13.0, torchvision==0.28.0 and the build/test tools"
python -m pip install -q "torch==2.13.0" "torchvision==0.28.0" "maturin>=1.7,<2"
echo "== building the Rust core (release) and installing ic-networks (editable)"
# --no-build-isolation: the build must see this env's torch (see README, "Install from source").
start=$(date +%s)
python -m pip install -q --no-build-isolation -e ".[test]"
echo "== build + install took $(( $(date +%s) - start )) s"
python -c "import ic_networks, torch; print('ic_networks', ic_networks.__version__, 'on torch', torch.__version__)"
