r"""Benchmarks of the fused CUDA kernels (GPU only; scripts/gpu_check.sh runs them).

Layer mode (the default), for one dtype and memory format per run: the layer rows of
`ic-networks bench` (nn.Conv2d, the IC op on its default CUDA route, the same op on the fused
kernels, the plain-PyTorch reference; `ic_networks.bench.bench_layers`), with cuDNN autotuning and
TF32 on, plus one line per shape with the fused route's speed-ups.

    python scripts/bench_cuda_fused.py --batch 256 [--shapes 64@56,512@7] [--channels-last] [--dtype bf16] \
        [--json out.json]

Kernel mode (`--kernels`): the forward, backward and reduce kernels alone through the raw bindings,
at 64@56 and 512@7 (3x3, stride 1), NCHW and channels_last, float32 and bfloat16: the time of each
call by CUDA events (median), each kernel's own device time from the profiler, and the GB/s of the
tensors each kernel must read and write (forward: Yb, Q in, out, relu_z out; backward: grad,
relu_z in, gy, G out) against a device-to-device copy of the same tensor.

    python scripts/bench_cuda_fused.py --kernels --batch 256 [--json kernels.json]

`--sanitize-case` runs every kernel once on a small case (for compute-sanitizer). `--emulated`
runs the same code without a GPU, on tiny CPU shapes and a host timer: with
IC_NETWORKS_CUDA_EMULATION=1 and the stand-in driver (tests/cuda_emu/fake_libcuda.cpp) the
kernels then run under the host emulation (gpu_check.sh's GPU_CHECK_EMULATE=1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from ic_networks import _core, bench, cuda_kernels

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
KERNEL_SHAPES = [("64@56", 64, 56), ("512@7", 512, 7)]
TINY = ("8@6", 8, 6)


def stream_of(dev: torch.device) -> int:
    return torch.cuda.current_stream(dev).cuda_stream if dev.type == "cuda" else 0


def timed(fn, dev: torch.device, reps: int) -> float:
    """Median seconds of one call of `fn`: CUDA events on a GPU, the host clock otherwise."""
    fn()
    times = []
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for s, e in ev:
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(dev)
        times = [s.elapsed_time(e) / 1e3 for s, e in ev]
    else:
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def kernel_device_times(fns, dev: torch.device, reps: int = 3) -> dict:
    """Average device time (s) per launch of each `ic_*` kernel while running `fns`, from the
    profiler (CUPTI sees driver-API launches too); {} without a GPU, {"error": ...} if it fails."""
    if dev.type != "cuda":
        return {}
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                for f in fns:
                    f()
            torch.cuda.synchronize(dev)
        out = {}
        for evt in prof.key_averages():
            if evt.key.startswith("ic_"):
                total = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0.0)
                out[evt.key] = total / max(evt.count, 1) / 1e6
        return out
    except Exception as e:  # noqa: BLE001 - reported in the JSON, never fatal
        return {"error": f"{type(e).__name__}: {e}"}


def kernel_rows(dev: torch.device, batch: int, reps: int, shapes) -> list:
    rows = []
    stream = stream_of(dev)
    for name, c, hw in shapes:
        for cl in (False, True):
            for dname in ("f32", "bf16"):
                dt = DTYPES[dname]
                fmt = torch.channels_last if cl else torch.contiguous_format
                g = torch.Generator(device=dev).manual_seed(0)
                mk = lambda: torch.randn(batch, c, hw, hw, device=dev, generator=g).to(dt).contiguous(memory_format=fmt)  # noqa: E731
                y, q, grad = mk(), mk(), mk()
                shift = torch.zeros(c, device=dev)
                alpha = torch.tensor(0.03, device=dev)  # a device alpha, as a module parameter is
                fwd = lambda: _core.cuda_fused_box_forward(y, q, shift, alpha, [3, 3], [1], [1], True, stream)  # noqa: E731
                r = fwd()
                if r is None:
                    print(f"{name} {dname}: the fused forward declined the call", file=sys.stderr)
                    continue
                rz = r[1]
                bwd = lambda: _core.cuda_fused_box_backward(grad, rz, alpha, [hw, hw], [3, 3], [1], [1], True, stream)  # noqa: E731
                dst = torch.empty_like(y)
                copy = lambda: dst.copy_(y)  # noqa: E731
                t_fwd, t_bwd, t_copy = timed(fwd, dev, reps), timed(bwd, dev, reps), timed(copy, dev, reps)
                per = kernel_device_times([fwd, bwd], dev)
                nbytes = y.numel() * y.element_size()
                gbs = lambda moved, t: moved / t / 1e9 if t > 0 else float("nan")  # noqa: E731
                row = {
                    "shape": name,
                    "layout": "channels_last" if cl else "NCHW",
                    "dtype": dname,
                    "batch": batch,
                    "fwd_ms": t_fwd * 1e3,
                    "bwd_ms": t_bwd * 1e3,
                    "copy_ms": t_copy * 1e3,
                    "fwd_gbs": gbs(4 * nbytes, t_fwd),
                    "bwd_gbs": gbs(4 * nbytes, t_bwd),
                    "copy_gbs": gbs(2 * nbytes, t_copy),
                    "kernel_ms": {k: v * 1e3 for k, v in per.items() if k != "error"},
                }
                if "error" in per:
                    row["profiler_error"] = per["error"]
                ks = {k.rsplit("_", 1)[0]: v for k, v in per.items() if k != "error"}
                if "ic_fwd_box" in ks:
                    row["fwd_kernel_gbs"] = gbs(4 * nbytes, ks["ic_fwd_box"])
                if "ic_bwd_box" in ks:
                    row["bwd_kernel_gbs"] = gbs(4 * nbytes, ks["ic_bwd_box"])
                rows.append(row)
                red = row["kernel_ms"].get(f"ic_reduce_{'f64' if dname == 'f64' else 'f32'}")
                print(
                    f"{name:6} {row['layout']:13} {dname:4}  fwd {row['fwd_ms']:.3f} ms {row['fwd_gbs']:.0f} GB/s, "
                    f"bwd+reduce {row['bwd_ms']:.3f} ms {row['bwd_gbs']:.0f} GB/s"
                    + (f" (reduce {red:.3f} ms)" if red is not None else "")
                    + f"; copy {row['copy_gbs']:.0f} GB/s; fwd/copy {row['fwd_gbs'] / row['copy_gbs']:.2f}, "
                    f"bwd/copy {row['bwd_gbs'] / row['copy_gbs']:.2f}",
                    flush=True,
                )
                y = q = grad = rz = dst = r = None  # frees this case's device memory before the next
    return rows


def sanitize_case(dev: torch.device) -> None:
    """Each kernel once on a small case, both layouts, float32 and bfloat16 (compute-sanitizer)."""
    stream = stream_of(dev)
    for cl in (False, True):
        for dt in (torch.float32, torch.bfloat16):
            fmt = torch.channels_last if cl else torch.contiguous_format
            mk = lambda *s: torch.randn(*s, device=dev).to(dt).contiguous(memory_format=fmt)  # noqa: E731
            y, q, grad = mk(2, 8, 9, 10), mk(2, 8, 9, 10), mk(2, 8, 9, 10)
            shift, alpha = torch.zeros(8, device=dev), torch.tensor(0.5, device=dev)
            _, rz = _core.cuda_fused_box_forward(y, q, shift, alpha, [3, 3], [1], [1], True, stream)
            _core.cuda_fused_box_backward(grad, rz, alpha, [9, 10], [3, 3], [1], [1], True, stream)
            x = mk(2, 8, 9, 10)
            s = _core.cuda_fused_boxsum(x, [3, 3], [2, 2], [1], [1], stream)
            _core.cuda_fused_collision_forward(s.clone(), s, shift, alpha, True, stream)
            _core.cuda_fused_boxsum_t_(x, s, [3, 3], [2, 2], [1], [1], "sub", stream)
    torch.cuda.synchronize(dev)
    print("sanitize case: every kernel ran")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument(
        "--shapes", default="", help="comma-separated layer shapes of ic_networks.bench.STAGES (default: all)"
    )
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--dtype", default="f32", choices=sorted(DTYPES))
    ap.add_argument("--kernels", action="store_true", help="time the forward, backward and reduce kernels alone")
    ap.add_argument("--sanitize-case", action="store_true", help="run every kernel once on a small case")
    ap.add_argument(
        "--emulated", action="store_true", help="no GPU: tiny CPU shapes (the stand-in driver runs the kernels)"
    )
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    if a.emulated:
        dev, batch, repeats = torch.device("cpu"), min(a.batch, 2), 1
        print("emulated: tiny CPU shapes, host timer; warm-up:", _core.cuda_fused_warm_up(0))
    else:
        if not torch.cuda.is_available():
            print("needs a CUDA device", file=sys.stderr)
            return 2
        dev, batch, repeats = torch.device("cuda"), a.batch, a.repeats
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print("device:", torch.cuda.get_device_name(), "warm-up:", cuda_kernels.warm_up(dev))
    if a.sanitize_case:
        sanitize_case(dev)
        return 0
    if a.kernels:
        rows = kernel_rows(dev, batch, repeats, [TINY] if a.emulated else KERNEL_SHAPES)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(
                    {
                        "device": str(dev) if a.emulated else torch.cuda.get_device_name(),
                        "emulated": a.emulated,
                        "rows": rows,
                    },
                    f,
                    indent=1,
                )
        return 0 if rows else 1
    if a.emulated:
        stages = [(TINY[0], TINY[1], TINY[2], 1)]
    else:
        want = [s for s in a.shapes.split(",") if s]
        unknown = sorted(set(want) - {s[0] for s in bench.STAGES})
        if unknown:
            print(f"--shapes: unknown {unknown}; known: {[s[0] for s in bench.STAGES]}", file=sys.stderr)
            return 2
        stages = [s for s in bench.STAGES if not want or s[0] in want]
    before = cuda_kernels.calls()
    rows = bench.bench_layers(
        dev, batch, repeats, False, stages=stages, channels_last=a.channels_last, dtype=DTYPES[a.dtype]
    )
    if dev.type == "cuda" and cuda_kernels.calls() == before:
        print("the fused kernels declined every call: the ic-fused rows are the libtorch route", file=sys.stderr)
    print(f"{'channels_last' if a.channels_last else 'NCHW'}, {a.dtype}")
    print(bench.format_tables(rows, [], dev, batch, dtype=DTYPES[a.dtype]))
    by = {(r["shape"], r["variant"]): r["fwdbwd_ms"] for r in rows}
    for name, *_ in stages:
        if (name, "ic-fused") in by:
            fused = by[(name, "ic-fused")]
            print(
                f"{name:10} fused speed-up over the reference (f+b): {by[(name, 'reference')] / fused:.2f}x, "
                f"over the libtorch path: {by[(name, 'ic')] / fused:.2f}x"
            )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {
                    "device": str(dev) if a.emulated else torch.cuda.get_device_name(),
                    "batch": batch,
                    "dtype": a.dtype,
                    "channels_last": a.channels_last,
                    "emulated": a.emulated,
                    "rows": rows,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
