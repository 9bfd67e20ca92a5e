#!/usr/bin/env bash
# Builds and tests ic-networks against another torch, in its own virtualenv and cargo target dir:
#   bash scripts/compat.sh 2.14.1
# 1. a venv .venv-VERSION with torch==VERSION and the torchvision that goes with it (pip's cache is
#    shared, so a second run downloads nothing);
# 2. `pip install --no-build-isolation ".[test]"` into it (the install a user does), checking that it
#    leaves that torch in place; cargo target dir target/torch-VERSION (IC_COMPAT_TARGET_DIR);
# 3. the core tests: cargo test (IC_COMPAT_CARGO_TEST=0 skips it), the op's tests (test_argument_errors.py,
#    test_op_library.py, test_compile.py, test_export.py, test_layouts_and_threads.py, test_ddp.py), test_wld.py,
#    and tests/test_install.py with this build's release wheel (dist/torch-X.Y/: installed without a
#    compiler into a fresh venv beside this torch, where tests/test_ic_conv.py passes; refused by pip
#    beside the default .venv's torch when that is another minor, where a forced install fails at import).
# Extra arguments go to pytest. Prints one line "compat torch=... build_s=... tests=... result=...".
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
VERSION=${1:?usage: scripts/compat.sh TORCH_VERSION [pytest args]}
shift
minor=$(echo "$VERSION" | cut -d. -f2)
TV=$(torchvision_for "$VERSION") || exit 2
TV=${IC_COMPAT_TORCHVISION:-$TV}
VENV=${IC_COMPAT_VENV:-.venv-$VERSION}
export CARGO_TARGET_DIR=${IC_COMPAT_TARGET_DIR:-$PWD/target/torch-$VERSION}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
PY=${PYTHON:-python3}
start=$(date +%s)
timer_start

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
echo "== [$VERSION] installing torch==$VERSION torchvision==$TV into $VENV"
python -m pip install -q "torch==$VERSION" "torchvision==$TV" "maturin>=1.7,<2"
before=$(python -c "import torch; print(torch.__version__)")
timer_lap "[$VERSION] torch install"

echo "== [$VERSION] pip install --no-build-isolation .[test] (target dir $CARGO_TARGET_DIR)"
if [ "$minor" -lt 13 ]; then
  # Below the declared range (torch>=2.13) pip would replace this torch: install without
  # dependencies, then the others (a torch outside the range is for trying, docs/install.md).
  python -m pip install -q --no-build-isolation --no-deps ".[test]"
  python -m pip install -q numpy tqdm matplotlib "captum>=0.7" "torchmetrics>=1.0" "pycocotools>=2.0.7" \
    pytest hypothesis onnx onnxruntime onnxscript
else
  python -m pip install -q --no-build-isolation ".[test]"
fi
timer_lap "[$VERSION] build + install"
build_s=$lap_s
after=$(python -c "import torch; print(torch.__version__)")
if [ "$before" != "$after" ]; then
  echo "error: installing ic-networks replaced torch $before with $after" >&2; exit 1
fi
echo "== [$VERSION] torch is still $after"
python -c "import ic_networks as icn, torch; print('ic_networks', icn.__version__, 'built against torch', icn._core.built_torch_version(), 'running', torch.__version__)"

# Right after the install, so that maturin's second run only repackages (cargo test's build
# environment differs and reruns build.rs).
echo "== [$VERSION] the wheel, for tests/test_install.py"
build_release_wheel dist
timer_lap "[$VERSION] release wheel"
# IC_COMPAT_CARGO_TEST=0 skips cargo test (.ci/run does: it runs on the default torch, and the op's
# pytest tests below exercise the same Rust through this torch).
rust_tests=skipped
if [ "${IC_COMPAT_CARGO_TEST:-1}" != 0 ]; then
  echo "== [$VERSION] cargo test"
  log=$(mktemp)
  cargo_test_release "$log" "torch $VERSION"
  rust_tests=$(awk '/^test result/ { for (i = 1; i < NF; i++) if ($(i + 1) == "passed;") n += $i } END { print n + 0 }' "$log")
  timer_lap "[$VERSION] cargo test"
fi

# The default environment's torch, when it is another minor: the real cross-version import check.
OTHER=${IC_COMPAT_OTHER_VENV:-.venv}
if [ -x "$OTHER/bin/python" ]; then
  export IC_TEST_OTHER_TORCH_SITE
  IC_TEST_OTHER_TORCH_SITE=$("$OTHER/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
fi

# tests/test_ic_conv.py runs inside tests/test_install.py, against this build's release wheel
# installed without a compiler (its CORE_TESTS), so it is not listed twice.
tests=(tests/test_argument_errors.py tests/test_op_library.py tests/test_compile.py
  tests/test_export.py tests/test_layouts_and_threads.py tests/test_ddp.py tests/test_wld.py tests/test_install.py)
# IC_COMPAT_TESTS="FILE ..." replaces that list.
if [ -n "${IC_COMPAT_TESTS:-}" ]; then
  read -r -a tests <<<"$IC_COMPAT_TESTS"
fi
if [ "${IC_COMPAT_MMDET:-0}" = 1 ]; then   # mmdetection too (compiles mmcv for this torch, once)
  IC_VENV=$VENV bash scripts/setup_mmdet.sh
  tests+=(tests/test_mmdet.py)
fi

echo "== [$VERSION] pytest ${tests[*]}"
# From the repository root the tests import the installed ic_networks (python/ is not on sys.path).
plog=$(mktemp)
set +e
python -m pytest -q -ra "${tests[@]}" "$@" 2>&1 | tee "$plog"
rc=${PIPESTATUS[0]}
set -e
timer_lap "[$VERSION] pytest"
summary=$(tail -1 "$plog")
result=$([ "$rc" = 0 ] && echo pass || echo FAIL)
echo "compat torch=$after build_s=$build_s cargo_tests=$rust_tests pytest=\"$summary\" total_s=$(( $(date +%s) - start )) result=$result"
exit "$rc"
