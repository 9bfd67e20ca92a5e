#!/usr/bin/env bash
# Set-up (scripts/setup.sh), then the Rust tests and the Python test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k ic_conv`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${IC_VENV:-.venv}/bin/activate"
echo "== cargo test"
cargo test --release --quiet 2>&1 | tail -n 30
echo "== pytest"
python -m pytest -q -ra "$@"
