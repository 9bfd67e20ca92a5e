"""Eager host time per call of IcConv2d against nn.Conv2d, on a tiny input (where the compute is
negligible and the time is the Python, dispatcher and framework overhead).

    python scripts/host_overhead.py [--device cpu|cuda] [--reps 2000] [--threads 1]

Prints microseconds per call (the fastest of 7 rounds: on a shared machine the others include
waits for the CPU) for: the forward with autograd recording
(parameters require grad), forward + backward, and the inference forward under no_grad, for
IcConv2d(4, 4, 3, padding=1) and nn.Conv2d(4, 4, 3, padding=1) on a 1x4x8x8 input, and their ratio.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import ic_networks as icn


def _per_call(fn, reps: int, sync) -> float:
    for _ in range(max(20, reps // 20)):
        fn()
    sync()
    rounds = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        rounds.append((time.perf_counter() - t0) / reps * 1e6)
    return min(rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    layers = {
        "IcConv2d": icn.IcConv2d(4, 4, 3, padding=1, alpha=0.5, alpha_mode="learnable").to(dev),
        "nn.Conv2d": nn.Conv2d(4, 4, 3, padding=1).to(dev),
    }
    x = torch.randn(1, 4, 8, 8, device=dev)
    rows = {}
    for name, m in layers.items():

        def fwd(m=m):
            m(x)

        def fwd_bwd(m=m):
            m(x).sum().backward()

        def infer(m=m):
            with torch.no_grad():
                m(x)

        rows[name] = [_per_call(f, args.reps, sync) for f in (fwd, fwd_bwd, infer)]
    print(
        f"torch {torch.__version__}, ic_networks {icn.__version__} ({icn.__file__}), device {dev}, "
        f"threads {args.threads}"
    )
    print(f"{'us per call':<12}{'forward':>10}{'fwd+bwd':>10}{'no_grad':>10}")
    for name, r in rows.items():
        print(f"{name:<12}" + "".join(f"{v:>10.1f}" for v in r))
    ratio = [a / b for a, b in zip(rows["IcConv2d"], rows["nn.Conv2d"])]
    print(f"{'ratio':<12}" + "".join(f"{v:>9.2f}x" for v in ratio))
    # The IC arithmetic alone, called as directly as this build allows (the no_grad column minus
    # this is the per-call cost of the module, the op dispatch and the framework).
    m = layers["IcConv2d"]
    p = [t.detach() for t in (m.weight, m.adjust_weight, m.adjust_bias, m.alpha, m.bias)]
    ops = torch.ops.ic_networks
    if hasattr(ops, "ic_conv2d_inference"):
        kernel = lambda: ops.ic_conv2d_inference.default(x, *p, [1, 1], [1, 1], [1, 1], 1)  # noqa: E731
    else:  # older builds: the Rust binding
        kernel = lambda: icn._core.ic_conv2d_forward(x, *p, [1, 1], [1, 1], [1, 1], 1, False)  # noqa: E731
    conv = lambda: torch.conv2d(x, p[0], p[4], 1, 1)  # noqa: E731
    with torch.no_grad():
        k, c = _per_call(kernel, args.reps, sync), _per_call(conv, args.reps, sync)
    print(f"IC inference kernel alone {k:.1f} us, torch.conv2d alone {c:.1f} us")


if __name__ == "__main__":
    main()
