# Shell functions shared by scripts/test.sh and scripts/compat.sh (sourced, not run).

# build_test_wheel: the wheel for tests/test_install.py, built with the active environment's torch
# (maturin, via pip wheel) into a temporary folder; exports IC_TEST_WHEEL with its path.
build_test_wheel() {
  local wheels
  wheels=$(mktemp -d)
  python -m pip wheel -q --no-build-isolation --no-deps . -w "$wheels"
  export IC_TEST_WHEEL
  IC_TEST_WHEEL=$(ls "$wheels"/ic_networks-*.whl)
}

# cargo_test_release LOG [WHAT]: `cargo test --release` with the active torch's lib/ on
# LD_LIBRARY_PATH (unit-test binaries in src/ find libtorch through it; tests/*.rs get an rpath
# from build.rs), the whole output in LOG and its "running"/"test result" lines printed; on a
# failure it prints LOG and exits the calling script with 1 ("cargo test failed[ on WHAT]").
cargo_test_release() {
  local log=$1 what=${2:-} torch_lib
  torch_lib=$(python -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
  if ! LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" cargo test --release >"$log" 2>&1; then
    cat "$log"; echo "cargo test failed${what:+ on $what}" >&2; exit 1
  fi
  grep -E "^(running|test result)" "$log"
}
