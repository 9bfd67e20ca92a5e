#!/usr/bin/env bash
# Wheels of ic-networks, one per torch minor and CPython, each in the folder of its torch minor:
#   bash scripts/build_wheels.sh                    # torch 2.13.0, 2.14.1 and 2.15.0, this python3's CPython
#   bash scripts/build_wheels.sh 2.15.0             # one torch
#   IC_WHEEL_PYTHONS="3.10 3.12" bash scripts/build_wheels.sh 2.15.0   # other CPythons (all: 3.10 to 3.13)
# writes dist/torch-2.13/, dist/torch-2.14/ and dist/torch-2.15/, from which users install with
# `pip install ic-networks -f dist/torch-2.15` (docs/install.md). Each wheel is built against the CPU and
# CUDA torch alike (the CUDA kernels compile at run time), pins its torch minor, and is manylinux_2_28
# (scripts/lib.sh, build_release_wheel).
#
# A (torch, CPython) pair builds in the venv and cargo target dir that scripts/setup.sh (.venv, target/)
# and scripts/compat.sh (.venv-VERSION, target/torch-VERSION) use for this python3, so after those (or
# CI) only the packaging runs; another CPython gets .venv-VERSION-pyX.Y and target/torch-VERSION-pyX.Y
# (a first build takes ~10 min and the venv ~6 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(2.13.0 2.14.1 2.15.0)
here=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
pythons=${IC_WHEEL_PYTHONS:-$here}
[ "$pythons" = all ] && pythons="3.10 3.11 3.12 3.13"
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
built=()
for v in "${versions[@]}"; do
  tv=$(torchvision_for "$v")
  for p in $pythons; do
    if ! "python$p" -c pass >/dev/null 2>&1; then
      echo "== CPython $p: python$p not found, skipped"; continue
    fi
    venv=.venv-$v target=target/torch-$v
    if [ "$p" != "$here" ]; then
      venv=.venv-$v-py$p target=target/torch-$v-py$p
    elif [ "$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null)" = "$v" ]; then
      venv=.venv target=target   # scripts/setup.sh's
    fi
    echo "== torch $v, CPython $p: $venv, target dir $target"
    (
      [ -x "$venv/bin/python" ] || "python$p" -m venv "$venv"
      # shellcheck disable=SC1091
      . "$venv/bin/activate"
      python -m pip install -q --upgrade pip
      python -m pip install -q "torch==$v" "torchvision==$tv" "maturin>=1.7,<2"
      CARGO_TARGET_DIR=$PWD/$target build_release_wheel dist
    )
    built+=("torch $v, CPython $p")
  done
done
echo "== built: ${#built[@]} wheel(s)"
ls -l dist/torch-*/ic_networks-*.whl
