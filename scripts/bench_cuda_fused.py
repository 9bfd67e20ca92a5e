"""Layer benchmark of the fused CUDA kernels (GPU only): nn.Conv2d, the IC op on its default
CUDA route (libtorch ops), the same op on the fused kernels (the switch on), and the plain-PyTorch
reference, at the stages of `ic-networks bench`, for one dtype and memory format per run. Prints fwd, fwd+bwd and inference times and each one's
ratio to the conv, and the fused path's speed-up over the reference.

    python scripts/bench_cuda_fused.py --batch 256 [--channels-last] [--dtype bf16] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
from torch import nn

from ic_networks import _core
from ic_networks.bench import STAGES, _interleaved, _Reference, _routed
from ic_networks.nn import IcConv2d

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
    dev, dt = torch.device("cuda"), DTYPES[a.dtype]
    print("warm-up:", _core.cuda_fused_warm_up(torch.cuda.current_device()))
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    rows = []
    print(f"{torch.cuda.get_device_name()}  N={a.batch}  {a.dtype}  {'channels_last' if a.channels_last else 'NCHW'}")
    print(f"{'shape':10} {'variant':10} {'fwd ms':>8} {'f+b ms':>8} {'inf ms':>8} {'f+b/conv':>9} {'inf/conv':>9}")
    for name, c, hw, stride in STAGES:
        torch.manual_seed(0)
        conv = nn.Conv2d(c, c, 3, stride, 1, bias=False).to(dev, dt).to(memory_format=fmt)
        ic = IcConv2d.from_conv(conv, alpha=0.03, alpha_mode="fixed").to(memory_format=fmt)
        variants = {"conv": conv, "ic": ic, "fused": ic, "reference": _Reference(ic)}
        routes = {"ic": False, "fused": True}
        x = torch.randn(a.batch, c, hw, hw, device=dev, dtype=dt).contiguous(memory_format=fmt).requires_grad_()
        go = torch.randn_like(conv(x).detach())

        def fb(m):
            def run():
                m(x).backward(go)
                x.grad = None
                for p in m.parameters():
                    p.grad = None
            return run

        def inf(m):
            def run():
                with torch.no_grad():
                    m(x)
            return run

        before = _core.cuda_fused_calls()
        t_f = _interleaved({k: _routed(lambda m=m: m(x), routes.get(k)) for k, m in variants.items()}, dev, a.repeats)
        t_fb = _interleaved({k: _routed(fb(m), routes.get(k)) for k, m in variants.items()}, dev, a.repeats)
        t_i = _interleaved({k: _routed(inf(m), routes.get(k)) for k, m in variants.items()}, dev, a.repeats)
        if _core.cuda_fused_calls() == before:
            print(f"{name}: the fused kernels declined every call; the 'fused' row is the libtorch route", file=sys.stderr)
        for k in variants:
            r = {"shape": name, "variant": k, "fwd_ms": t_f[k] * 1e3, "fwdbwd_ms": t_fb[k] * 1e3, "infer_ms": t_i[k] * 1e3,
                 "fwdbwd_over_conv": t_fb[k] / t_fb["conv"], "infer_over_conv": t_i[k] / t_i["conv"]}
            rows.append(r)
            print(f"{name:10} {k:10} {r['fwd_ms']:8.3f} {r['fwdbwd_ms']:8.3f} {r['infer_ms']:8.3f} {r['fwdbwd_over_conv']:9.2f} {r['infer_over_conv']:9.2f}")
        print(f"{name:10} fused speed-up over the reference (f+b): {t_fb['reference'] / t_fb['fused']:.2f}x, over the libtorch path: {t_fb['ic'] / t_fb['fused']:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "batch": a.batch, "dtype": a.dtype,
                       "channels_last": a.channels_last, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
