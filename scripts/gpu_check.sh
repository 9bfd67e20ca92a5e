#!/usr/bin/env bash
# GPU validation of the opt-in fused CUDA kernels and of the op on them (src/cuda/fused,
# docs/cuda-kernels.md), sized for short GPU runs: each stage ends within its deadline by
# construction, and everything it wrote comes back as one tarball.
#
#   bash scripts/gpu_check.sh [OUTDIR]          (default $OUT or /tmp/gpu_check)
#
# STAGE=1 (default; at most GPU_CHECK_DEADLINE s, default 300):
#   info-cold   torch, device, the libcuda and libnvrtc files used, a cold compile (warm-up) and its time
#   info-cached a second process: the disk-cache hit
#   gpu-tests   tests/test_cuda_fused_gpu.py, every test (no -x), JUnit XML; each kernel through the
#               Python composition, then the op with the switch on: float64 parity vs the oracle,
#               float32 parity vs the libtorch CUDA route, gradcheck, fp16/bf16 and autocast,
#               channels_last, non-default stream, CUDA-graph capture after warm-up, determinism
#   bench-n256  scripts/bench_cuda_fused.py at N=256, float32 NCHW, 64@56, 512@7 and 64@56/s2
# STAGE=2 (optional, after stage 1; default deadline 240 s):
#   kernels     scripts/bench_cuda_fused.py --kernels: forward, backward and reduce alone (CUDA
#               events, and the profiler's per-kernel device time) at 64@56 and 512@7, N=256, NCHW
#               and channels_last, float32 and bfloat16, in GB/s against a device copy
#   sanitizer   compute-sanitizer memcheck, racecheck and synccheck on one small case per kernel
#               (skipped where compute-sanitizer is not installed)
#   bench-n256-cl, bench-n256-bf16   the bench of stage 1 in channels_last, and in bfloat16
# STAGE=3 (optional; default deadline 240 s): bench-n32, cli-n32, cli-n256, cli-bf16 (the model
#   rows of `ic-networks bench --device cuda`), and `rust` (cargo test) where cargo is present
#   and the core was built here.
# STEPS="info gpu-tests" runs only those steps of the stage. STEPS=build builds the core with cargo
# (580 s, outside any stage); IC_PREBUILT_CORE=FILE copies a core built elsewhere instead.
#
# Budget: a step runs with the smaller of its own cap and the time left before the deadline, less
# GPU_CHECK_RESERVE s (default 10) for packing; a step with under 15 s left is skipped. The caps
# of stage 1 (45 + 20 + 150 + 70 = 285 s) fit 300 s with the set-up; a correctness step that is
# skipped or cut counts as a failure.
#
# Output: OUTDIR/gpu_check-stage<N>.tar.gz is the only file written to OUTDIR, packed again after
# every step (a run cut short still returns what it finished): every step's log and JSON,
# gpu-tests.xml, nvidia-smi.txt, steps.tsv (step, rc, seconds, status) and summary.txt, which is
# also printed at the end (failing tests and the tail of every failed step's log). The kernel cache
# and the working files are in GPU_CHECK_WORK (default /tmp/ic_gpu_check), outside OUTDIR; stage 1
# empties the cache so that info-cold measures a cold compile, later stages reuse it.
#
# GPU_CHECK_EMULATE=1 (CI, tests/test_cuda_launch_path.py) runs the same flow without a GPU on the
# stand-in driver named by IC_NETWORKS_LIBCUDA (tests/cuda_emu/fake_libcuda.cpp) with
# IC_NETWORKS_CUDA_EMULATION=1: the benches and the kernel timing on tiny CPU shapes, the steps
# that need a real GPU (sanitizer, cli-*) reported as skipped. GPU_CHECK_CAP_SCALE=K multiplies
# every step's cap (CI sets it with a longer GPU_CHECK_DEADLINE: a loaded CPU machine is slower).
#
# Exit status: 0 when every correctness step passed, 1 otherwise, 2 on bad arguments, 3 without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-/tmp/gpu_check}}
STAGE=${STAGE:-1}
case "$STAGE" in
  1) DEADLINE=${GPU_CHECK_DEADLINE:-300} ;;
  2 | 3) DEADLINE=${GPU_CHECK_DEADLINE:-240} ;;
  *) echo "gpu_check: STAGE must be 1, 2 or 3, got '$STAGE'" >&2; exit 2 ;;
esac
RESERVE=${GPU_CHECK_RESERVE:-10}
CAP_SCALE=${GPU_CHECK_CAP_SCALE:-1}  # CI on a loaded machine: every cap times this (the deadline still holds)
STEPS=${STEPS:-all}
EMULATE=${GPU_CHECK_EMULATE:-0}
WORK=${GPU_CHECK_WORK:-/tmp/ic_gpu_check}
LOGS="$WORK/stage$STAGE"
TARBALL="$OUTDIR/gpu_check-stage$STAGE.tar.gz"
mkdir -p "$OUTDIR" "$WORK"
rm -rf "$LOGS" && mkdir -p "$LOGS"
printf 'step\trc\tseconds\tstatus\n' >"$LOGS/steps.tsv"
pack() { tar -czf "$TARBALL.tmp" -C "$WORK" "stage$STAGE" && mv -f "$TARBALL.tmp" "$TARBALL"; }

if [ -n "${IC_VENV:-}" ]; then . "$IC_VENV/bin/activate"; elif [ -d .venv ]; then . .venv/bin/activate; fi
if ! command -v python >/dev/null 2>&1; then  # images with only python3: a `python` for the steps
  mkdir -p "$WORK/bin" && ln -sf "$(command -v python3)" "$WORK/bin/python" && export PATH="$WORK/bin:$PATH"
fi
if [ -n "${IC_PREBUILT_CORE:-}" ]; then
  [ -f "$IC_PREBUILT_CORE" ] || { echo "gpu_check: IC_PREBUILT_CORE: no file $IC_PREBUILT_CORE" >&2; exit 2; }
  cp "$IC_PREBUILT_CORE" python/ic_networks/ && IC_SKIP_BUILD=1
  echo "gpu_check: using the prebuilt core $(basename "$IC_PREBUILT_CORE")"
fi
SP=$(python -c "import site; print(site.getsitepackages()[0])")
export LD_LIBRARY_PATH="$SP/torch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# the checkout's package when it holds a built core (an editable install, or IC_PREBUILT_CORE)
if compgen -G "python/ic_networks/_core*.so" >/dev/null; then export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"; fi
export IC_NETWORKS_KERNEL_CACHE_DIR="$WORK/kernel-cache"
[ "$STAGE" = 1 ] && rm -rf "$IC_NETWORKS_KERNEL_CACHE_DIR"
if [ "$EMULATE" = 1 ]; then
  [ -f "${IC_NETWORKS_LIBCUDA:-}" ] || { echo "gpu_check: GPU_CHECK_EMULATE=1 needs IC_NETWORKS_LIBCUDA (the stand-in driver)" >&2; exit 2; }
  python -c "import sys; from ic_networks import _core; sys.exit(0 if _core.cuda_emulation_built() else 1)" ||
    { echo "gpu_check: GPU_CHECK_EMULATE=1 needs a core built with the cargo feature cuda-emulation (scripts/setup.sh)" >&2; exit 2; }
  export IC_NETWORKS_CUDA_EMULATION=1
  echo "emulated: no GPU; the stand-in driver $IC_NETWORKS_LIBCUDA" >"$LOGS/nvidia-smi.txt"
elif ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch sees no CUDA device here; nothing to check" >&2
  exit 3
else
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$LOGS/nvidia-smi.txt" 2>&1
  cat "$LOGS/nvidia-smi.txt"
fi
pack

fail=0
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$LOGS/steps.tsv"; echo "== $1: $4 (rc=$2, $3 s)"; }
wanted() { [ "$STEPS" = all ] || [[ " $STEPS " == *" $1 "* || " $STEPS " == *" ${1%%-*} "* ]]; }
skip() {  # skip NAME CORRECTNESS WHY
  wanted "$1" || return 0
  record "$1" - 0 "SKIPPED ($3)"; [ "$2" = 1 ] && [[ "$3" == deadline* ]] && fail=1
  pack
}
step() {  # step NAME CAP_S CORRECTNESS(0/1) CMD...
  local name=$1 limit=$(($2 * CAP_SCALE)) crit=$3; shift 3
  wanted "$name" || return 0
  local left=$((DEADLINE - SECONDS - RESERVE))
  if [ "$left" -lt 15 ]; then skip "$name" "$crit" "deadline: ${left}s left"; return; fi
  local status=ok
  if [ "$limit" -gt "$left" ]; then limit=$left; status="ok, cut to ${left}s"; fi
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="TIMED OUT after ${limit}s"; elif [ "$rc" != 0 ]; then status=FAILED; fi
  record "$name" "$rc" "$((SECONDS - t0))" "$status"
  if [ "$rc" != 0 ] && [ "$crit" = 1 ]; then fail=1; fi
  pack
}

if [ "$STEPS" = build ]; then
  SECONDS=0 DEADLINE=600 RESERVE=0
  step build 580 1 bash -c 'cargo build --release && cp target/release/lib_core.so python/ic_networks/_core.cpython-$(python -c "import sys; print(f\"{sys.version_info[0]}{sys.version_info[1]}\")")-x86_64-linux-gnu.so'
  exit $fail
fi

INFO='
import time, torch, ic_networks
from ic_networks import _core as c
print("torch", torch.__version__, "cuda", torch.version.cuda, "core built against torch", c.built_torch_version())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
print("libraries", c.cuda_fused_libraries())
print("available", c.cuda_fused_available(), c.cuda_fused_unavailable_reason())
print("sync check (IC_NETWORKS_CUDA_SYNC_CHECK)", c.cuda_fused_sync_check())
t = time.perf_counter(); w = c.cuda_fused_warm_up(0); print("warm-up", w, f"{time.perf_counter() - t:.2f} s")
'
BENCH="python scripts/bench_cuda_fused.py"
[ "$EMULATE" = 1 ] && BENCH="$BENCH --emulated"
case "$STAGE" in
  1)
    step info-cold 45 1 python -c "$INFO"
    step info-cached 20 1 python -c "$INFO"
    step gpu-tests 150 1 python -m pytest -q -ra -p no:cacheprovider -o faulthandler_timeout=60 --durations=15 \
      --junitxml="$LOGS/gpu-tests.xml" tests/test_cuda_fused_gpu.py
    step bench-n256 70 0 $BENCH --batch 256 --repeats 5 --shapes 64@56,512@7,64@56/s2 --json "$LOGS/bench-n256.json"
    ;;
  2)
    step kernels 60 0 $BENCH --kernels --batch 256 --json "$LOGS/kernels.json"
    SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
    if [ "$EMULATE" = 1 ]; then
      skip sanitizer 1 "needs a GPU"
    elif [ -z "$SAN" ]; then
      skip sanitizer 1 "no compute-sanitizer on this machine"
    else
      step sanitizer 100 1 bash -c "for t in memcheck racecheck synccheck; do echo \"== \$t\"; \
        '$SAN' --tool \$t --kernel-name kns=ic_ --error-exitcode 9 python scripts/bench_cuda_fused.py --sanitize-case || exit \$?; done"
    fi
    step bench-n256-cl 60 0 $BENCH --batch 256 --repeats 5 --shapes 64@56,512@7 --channels-last --json "$LOGS/bench-n256-cl.json"
    step bench-n256-bf16 60 0 $BENCH --batch 256 --repeats 5 --shapes 64@56,512@7 --dtype bf16 --json "$LOGS/bench-n256-bf16.json"
    ;;
  3)
    step bench-n32 50 0 $BENCH --batch 32 --json "$LOGS/bench-n32.json"
    if [ "$EMULATE" = 1 ]; then
      for s in cli-n32 cli-n256 cli-bf16; do skip "$s" 0 "needs a GPU"; done
    else
      step cli-n32 60 0 python -m ic_networks bench --device cuda --batch 32 --model-batch 32 --no-compile --json "$LOGS/cli-n32.json"
      step cli-n256 90 0 python -m ic_networks bench --device cuda --batch 256 --model-batch 128 --no-compile --json "$LOGS/cli-n256.json"
      step cli-bf16 60 0 python -m ic_networks bench --device cuda --skip-layers --model-batch 128 --autocast bf16 --json "$LOGS/cli-bf16.json"
    fi
    if [ "${IC_SKIP_BUILD:-0}" != 1 ] && command -v cargo >/dev/null 2>&1; then
      step rust 200 1 cargo test --release --test rust_cuda_fused -- --nocapture
    fi
    ;;
esac

{
  echo "gpu_check stage $STAGE: $([ $fail = 0 ] && echo PASSED || echo FAILED) in $SECONDS s (deadline $DEADLINE s)"
  column -t -s $'\t' "$LOGS/steps.tsv" 2>/dev/null || cat "$LOGS/steps.tsv"
  if [ -f "$LOGS/gpu-tests.log" ]; then
    echo "-- gpu-tests:"
    grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed|error" "$LOGS/gpu-tests.log" | tail -n 60
  fi
  grep -h "speed-up\|GB/s" "$LOGS"/bench-*.log "$LOGS"/kernels.log 2>/dev/null | head -n 40
  tail -n +2 "$LOGS/steps.tsv" | while IFS=$'\t' read -r name rc _ status; do
    if [ "$rc" != 0 ] && [ "$rc" != - ] && [ -f "$LOGS/$name.log" ]; then
      echo "-- $name ($status), last lines:"
      tail -n 25 "$LOGS/$name.log"
    fi
  done
} >"$LOGS/summary.txt" 2>&1
pack
head -c 9000 "$LOGS/summary.txt"
echo "gpu_check: $TARBALL"
exit $fail
