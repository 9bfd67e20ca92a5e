#!/usr/bin/env bash
# Set-up (scripts/setup.sh), then the main job: `ic-networks demo` on the bundled Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${IC_VENV:-.venv}/bin/activate"
ic-networks demo "$@"
