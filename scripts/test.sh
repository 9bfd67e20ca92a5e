#!/usr/bin/env bash
# Set-up (scripts/setup.sh), then the Rust tests and the Python test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k ic_conv`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
timer_start
bash scripts/setup.sh
timer_lap "set-up (scripts/setup.sh)"
. "${IC_VENV:-.venv}/bin/activate"
# mmdetection for tests/test_mmdet.py (compiles mmcv once with -std=c++20, ~17 min on quiet cores, then
# cached as a wheel; IC_SKIP_MMDET=1 skips it and those tests are then skipped).
if [ "${IC_SKIP_MMDET:-0}" != 1 ]; then
  bash scripts/setup_mmdet.sh
  timer_lap "mmdetection (scripts/setup_mmdet.sh)"
fi
# The release wheel (dist/torch-X.Y/, what scripts/build_wheels.sh makes) for tests/test_install.py,
# built now, while maturin's build environment still matches the set-up's (cargo test's differs and
# reruns build.rs). The sdist is built from source there once per run (IC_TEST_SDIST).
echo "== the release wheel (scripts/lib.sh build_release_wheel)"
build_release_wheel dist
timer_lap "release wheel"
export IC_TEST_SDIST=${IC_TEST_SDIST:-1}
echo "== cargo test"
cargo_test_release "$(mktemp)"
timer_lap "cargo test"
echo "== pytest"
python -m pytest -q -ra "$@"
timer_lap "pytest"
