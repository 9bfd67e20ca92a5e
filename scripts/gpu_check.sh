#!/usr/bin/env bash
# GPU validation of the opt-in fused CUDA kernels and of the op on them (src/cuda/fused, docs/cuda-kernels.md).
# Sized for about 8 minutes on one H200 (build excluded when a built _core is carried: IC_SKIP_BUILD=1).
#
#   bash scripts/gpu_check.sh [OUTDIR]        (default $OUT or /tmp/gpu_check)
#
# Two ways to get the Rust core there (docs/cuda-kernels.md, "Running the GPU suite"):
# * the machine has cargo and the crates: build in one call, check in the next,
#     STEPS=build bash scripts/gpu_check.sh "$OUT"
#     IC_SKIP_BUILD=1 bash scripts/gpu_check.sh "$OUT"
# * it has no Rust toolchain (the device tool's H200 image): build _core here against that
#   machine's torch and Python, carry it, and name it (the build and rust steps are skipped):
#     IC_PREBUILT_CORE=.gpu/_core.cpython-312-x86_64-linux-gnu.so bash scripts/gpu_check.sh "$OUT"
# It needs a Python with torch (CUDA wheel): $IC_VENV, ./.venv, or the python3 on PATH.
#
# Steps (each logged to OUTDIR/<step>.log, a one-line summary printed):
#   info        driver, NVRTC, cold compile (warm-up) time, then a second process's disk-cache hit
#   rust        cargo test of the NVRTC/cache/availability tests (skipped with IC_SKIP_BUILD=1,
#               IC_PREBUILT_CORE or without cargo)
#   gpu-tests   tests/test_cuda_fused_gpu.py: each kernel (Python composition), then the op with
#               the switch on: float64 parity vs the oracle, float32 parity vs the libtorch CUDA
#               route, gradcheck (float64), fp16/bf16 and autocast, channels_last, non-default
#               stream, CUDA-graph capture after warm-up, determinism
#   bench-*     scripts/bench_cuda_fused.py at N=32 and N=256 (float32 NCHW; N=256 also
#               channels_last and bf16): fwd+bwd / conv for conv, ic (libtorch route), fused (the
#               op with the switch on), reference
#   cli-*       ic-networks bench --device cuda at N=32 and N=256 with the model rows (it adds the
#               ic-fused rows itself when the kernels are available); cli-bf16: the model rows at
#               batch 128 under bf16 autocast
# Time: the whole run stops starting steps once GPU_CHECK_DEADLINE seconds (default 540, under the
# device tool's 600 s per command) have passed, and each step's limit is cut to what is left;
# correctness steps run first. STEPS="info gpu-tests bench-n256" runs a subset (default: all).
# Exit status: non-zero if any correctness step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUTDIR"
if [ -n "${IC_VENV:-}" ]; then . "$IC_VENV/bin/activate"; elif [ -d .venv ]; then . .venv/bin/activate; fi
if ! command -v python >/dev/null 2>&1; then  # images with only python3: a `python` for the steps
  mkdir -p "$OUTDIR/bin" && ln -sf "$(command -v python3)" "$OUTDIR/bin/python" && export PATH="$OUTDIR/bin:$PATH"
fi
if [ -n "${IC_PREBUILT_CORE:-}" ]; then
  [ -f "$IC_PREBUILT_CORE" ] || { echo "gpu_check: IC_PREBUILT_CORE: no file $IC_PREBUILT_CORE" >&2; exit 2; }
  cp "$IC_PREBUILT_CORE" python/ic_networks/ && IC_SKIP_BUILD=1
  echo "gpu_check: using the prebuilt core $(basename "$IC_PREBUILT_CORE")"
fi
SP=$(python -c "import site; print(site.getsitepackages()[0])")
export LD_LIBRARY_PATH="$SP/torch/lib:$SP/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$PWD/python"
export IC_NETWORKS_KERNEL_CACHE_DIR="$OUTDIR/kernel-cache"
rm -rf "$IC_NETWORKS_KERNEL_CACHE_DIR"
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch sees no CUDA device here; nothing to check" >&2
  exit 3
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUTDIR/nvidia-smi.txt"

fail=0
DEADLINE=${GPU_CHECK_DEADLINE:-540}
STEPS=${STEPS:-all}
step() {  # step NAME LIMIT_S CORRECTNESS(0/1) CMD...
  local name=$1 limit=$2 crit=$3; shift 3
  if [ "$STEPS" != all ] && ! [[ " $STEPS " == *" ${name%%-*} "* || " $STEPS " == *" $name "* ]]; then return; fi
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 15 ]; then echo "== $name: SKIPPED (deadline)"; [ "$crit" = 1 ] && fail=1; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUTDIR/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0)) s"
  tail -n 4 "$OUTDIR/$name.log" | sed 's/^/   /'
  if [ "$rc" != 0 ] && [ "$crit" = 1 ]; then fail=1; fi
}

if [ "${IC_SKIP_BUILD:-0}" != 1 ]; then
  step build 580 1 bash -c 'cargo build --release && cp target/release/lib_core.so python/ic_networks/_core.cpython-$(python -c "import sys; print(f\"{sys.version_info[0]}{sys.version_info[1]}\")")-x86_64-linux-gnu.so'
  SECONDS=0  # the deadline counts the checks, not the build
fi

INFO='
import time, torch, ic_networks
from ic_networks import _core as c
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(), "core built against torch", c.built_torch_version())
print("available", c.cuda_fused_available(), c.cuda_fused_unavailable_reason())
t = time.perf_counter(); w = c.cuda_fused_warm_up(0); print("warm-up", w, f"{time.perf_counter() - t:.2f} s")
'
step info-cold 120 1 python -c "$INFO"
step info-cached 120 1 python -c "$INFO"
if [ "${IC_SKIP_BUILD:-0}" != 1 ] && command -v cargo >/dev/null 2>&1; then
  step rust 600 1 cargo test --release --test rust_cuda_fused -- --nocapture
fi
step gpu-tests 240 1 python -m pytest -q -ra -x tests/test_cuda_fused_gpu.py
step bench-n32 120 0 python scripts/bench_cuda_fused.py --batch 32 --json "$OUTDIR/bench-n32.json"
step bench-n256 150 0 python scripts/bench_cuda_fused.py --batch 256 --json "$OUTDIR/bench-n256.json"
step bench-n256-cl 150 0 python scripts/bench_cuda_fused.py --batch 256 --channels-last --json "$OUTDIR/bench-n256-cl.json"
step bench-n256-bf16 150 0 python scripts/bench_cuda_fused.py --batch 256 --dtype bf16 --json "$OUTDIR/bench-n256-bf16.json"
step cli-n32 150 0 python -m ic_networks bench --device cuda --batch 32 --model-batch 32 --no-compile --json "$OUTDIR/cli-n32.json"
step cli-n256 240 0 python -m ic_networks bench --device cuda --batch 256 --model-batch 128 --no-compile --json "$OUTDIR/cli-n256.json"
step cli-bf16 150 0 python -m ic_networks bench --device cuda --skip-layers --model-batch 128 --autocast bf16 --json "$OUTDIR/cli-bf16.json"
grep -h "speed-up" "$OUTDIR"/bench-n256*.log 2>/dev/null | sed 's/^/   /'
echo "gpu_check: $([ $fail = 0 ] && echo PASSED || echo FAILED) (logs in $OUTDIR)"
exit $fail
