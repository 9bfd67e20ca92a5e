#!/usr/bin/env bash
# Set-up (scripts/setup.sh), then the Rust tests and the Python test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k ic_conv`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
bash scripts/setup.sh
. "${IC_VENV:-.venv}/bin/activate"
# mmdetection for tests/test_mmdet.py (compiles mmcv once, ~10 min; IC_SKIP_MMDET=1 skips it and
# those tests are then skipped). mmcv 2.1.0 compiles its ops with -std=c++17, which torch >= 2.14's
# headers refuse: there it runs on torch 2.13 (`IC_COMPAT_MMDET=1 bash scripts/compat.sh 2.13.0`).
if [ "${IC_SKIP_MMDET:-0}" != 1 ]; then
  if python -c "import sys, torch; sys.exit(tuple(int(p) for p in torch.__version__.split('.')[:2]) >= (2, 14))"; then
    bash scripts/setup_mmdet.sh
  else
    echo "== not installing mmdetection: mmcv 2.1.0 does not build against torch $(python -c 'import torch; print(torch.__version__)') (C++20 headers); it works with torch 2.13 (docs/detection.md)"
  fi
fi
# The wheel for tests/test_install.py, built now, while maturin's build environment still matches
# the set-up's (cargo test's differs and reruns build.rs).
echo "== the wheel (maturin, via pip wheel)"
build_test_wheel
echo "== cargo test"
cargo_test_release "$(mktemp)"
echo "== pytest"
python -m pytest -q -ra "$@"
