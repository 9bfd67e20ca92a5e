#!/usr/bin/env bash
# The format and lint checks, as CI runs them (after scripts/test.sh has made the venv and built the
# core, so clippy reuses that release build's dependencies):
#   cargo fmt --check                                   (rustfmt.toml)
#   cargo clippy --release --all-targets -- -D warnings (allow-list: [lints.clippy] in Cargo.toml)
#   ruff format --check . ; ruff check .                ([tool.ruff] in pyproject.toml)
#   clang-format --dry-run --Werror src/cpp, src/cuda/kernels (.clang-format), where installed
# Each check runs even when an earlier one failed; the exit status is 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. "${IC_VENV:-.venv}/bin/activate"
failed=()
check() {
  echo "== $*"
  "$@" || failed+=("$*")
}
check cargo fmt --check
check cargo clippy --release --all-targets -q -- -D warnings
check ruff format --check .
check ruff check .
# C++ and CUDA C against .clang-format (clang-format 14, Debian's; .ci/run installs it)
if command -v clang-format >/dev/null 2>&1; then
  check clang-format --dry-run --Werror src/cpp/*.cpp src/cpp/*.h src/cpp/compat/*.c src/cpp/compat/*.h \
    src/cuda/kernels/*.cu src/cuda/kernels/*.h tests/cuda_emu/*.cpp
else
  echo "== clang-format not installed: C++ formatting not checked"
fi
if [ ${#failed[@]} -gt 0 ]; then
  printf 'lint failed: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "lint: clean"
