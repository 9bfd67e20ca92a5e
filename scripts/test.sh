#!/usr/bin/env bash
# Set-up (scripts/setup.sh), then the Rust tests and the Python test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k ic_conv`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# mmdetection for tests/test_mmdet.py (compiles mmcv once, ~10 min; IC_SKIP_MMDET=1 skips it and
# those tests are then skipped)
[ "${IC_SKIP_MMDET:-0}" = 1 ] || bash scripts/setup_mmdet.sh
. "${IC_VENV:-.venv}/bin/activate"
echo "== cargo test"
# unit-test binaries in src/ find libtorch through LD_LIBRARY_PATH (tests/*.rs get an rpath, build.rs)
TORCH_LIB=$(python -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
log=$(mktemp)
if ! LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" cargo test --release >"$log" 2>&1; then
  cat "$log"; echo "cargo test failed" >&2; exit 1
fi
grep -E "^(running|test result)" "$log"
echo "== pytest"
python -m pytest -q -ra "$@"
