"""Layer benchmark of the fused CUDA kernels (GPU only), for one dtype and memory format per run:
the layer rows of `ic-networks bench` (nn.Conv2d, the IC op on its default CUDA route, the same op
on the fused kernels, the plain-PyTorch reference; `ic_networks.bench.bench_layers`), with cuDNN
autotuning and TF32 on, plus one line per shape with the fused route's speed-ups.

    python scripts/bench_cuda_fused.py --batch 256 [--channels-last] [--dtype bf16] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from ic_networks import bench, cuda_kernels

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--dtype", default="f32", choices=sorted(DTYPES))
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = torch.device("cuda")
    print("warm-up:", cuda_kernels.warm_up(dev))
    before = cuda_kernels.calls()
    rows = bench.bench_layers(dev, a.batch, a.repeats, False, channels_last=a.channels_last, dtype=DTYPES[a.dtype])
    if cuda_kernels.calls() == before:
        print("the fused kernels declined every call: the ic-fused rows are the libtorch route", file=sys.stderr)
    print(f"{'channels_last' if a.channels_last else 'NCHW'}, {a.dtype}")
    print(bench.format_tables(rows, [], dev, a.batch, dtype=DTYPES[a.dtype]))
    by = {(r["shape"], r["variant"]): r["fwdbwd_ms"] for r in rows}
    for name, *_ in bench.STAGES:
        if (name, "ic-fused") in by:
            fused = by[(name, "ic-fused")]
            print(f"{name:10} fused speed-up over the reference (f+b): {by[(name, 'reference')] / fused:.2f}x, "
                  f"over the libtorch path: {by[(name, 'ic')] / fused:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "batch": a.batch, "dtype": a.dtype,
                       "channels_last": a.channels_last, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
