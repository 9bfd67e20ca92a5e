"""The IC layer's cost, measured side by side (the ``ic-networks bench`` verb,
:mod:`ic_networks.cli.bench`, prints these tables).

Everything is measured in one process, interleaved (each repeat runs every variant once, in turn),
and reported as medians with ratios, so slow drifts of the machine hit all variants alike.

Layer benchmark, per ResNet stage shape (3x3 conv, C -> C, padding 1, no bias, alpha = 0.03):

* ``conv``      - ``nn.Conv2d``, the baseline;
* ``ic``        - ``IcConv2d`` (the Rust op; on CUDA its default route, the libtorch ops);
* ``ic-fused``  - the same layer on the fused CUDA kernels (``IC_NETWORKS_CUDA_KERNELS=1``;
  CUDA only, when libcuda and NVRTC are present);
* ``reference`` - the plain-PyTorch formula (``ic_networks.reference``), what a user would write;
* ``compiled``  - ``torch.compile`` of the reference (skipped with ``--no-compile``).

Columns: ``fwd`` (training-mode forward), ``fwd+bwd``, ``infer`` (``no_grad``, eval) in ms, and
``saved`` = bytes kept for the backward (unique storages, parameters excluded, counted through
autograd's saved-tensor hooks) in MB; ``n/a`` for ``compiled``, which that count leaves out.

Floor table, per shape for fwd+bwd and infer: the least time this formulation can take here, the
conv's measured time plus the IC branch's extra multiply-adds at the conv's own measured rate plus
its minimal extra memory passes at a copy bandwidth measured in the same run
(:mod:`ic_networks.bench_floor`), printed as ``floor / conv`` beside ``ic / conv``, with
``ic / floor`` (how far the op is from that floor) and ``reference / ic``.

Model benchmark: one SGD train step (forward, cross-entropy, backward, step) and one eval-mode
forward under ``no_grad`` of ResNet-18/50 against IC-ResNet-18/50 (alpha = 1), and on CUDA with the
fused kernels also ``ic_*-fused``: their times, and ``peak`` = the most memory one train step holds
above what is resident before it (parameters, momentum and the batch left out; gradients,
activations and temporaries in) in MB, measured in one more step after the timed ones
(:mod:`ic_networks.bench_memory`), with ``ic / plain peak``. With a copy bandwidth, the IC rows also
get the eval forward's floor (:func:`ic_networks.bench_floor.model_eval_floor`: the plain model's
time plus each IC layer's branch at the rate of the plain conv it replaces, whose share of the
plain forward is timed in extra, hooked runs) as ``eval floor / plain`` and ``eval ic / floor``.

Targets: fwd+bwd <= 1.20x conv and >= 1.5x faster than the reference; saved <= conv's plus one
output-sized tensor; inference <= 1.10x conv; IC-ResNet-50 train step <= 1.10x ResNet-50 in time
and in peak memory. The measured numbers are in docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import glob
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import bench_floor, bench_memory

STAGES = [  # (name, channels, spatial size, stride)
    ("64@56", 64, 56, 1),
    ("128@28", 128, 28, 1),
    ("256@14", 256, 14, 1),
    ("512@7", 512, 7, 1),
    ("64@56/s2", 64, 56, 2),
]
ALPHA, ALPHA_MODE = 0.03, "fixed"  # the IC layer's alpha in the layer benchmark


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 2
) -> dict[str, float]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(_time(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}


def _saved_bytes(fn: Callable[[], torch.Tensor], exclude: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of ``fn()``."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


class _Reference(nn.Module):
    def __init__(self, ic):
        super().__init__()
        self.ic = ic

    def forward(self, x):
        from .reference import ic_conv2d_reference

        m = self.ic
        return ic_conv2d_reference(
            x, m.weight, m.adjust_weight, m.adjust_bias, m.alpha, m.bias, m.stride, m.padding, m.dilation, m.groups
        )


def fused_available(device: torch.device) -> bool:
    """Whether the fused CUDA kernels can run for ``device`` (a CUDA device with libcuda and NVRTC)."""
    from . import cuda_kernels

    return device.type == "cuda" and cuda_kernels.available()


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _routed(
    fn: Callable[[], object], on: bool | None, autocast: torch.dtype | None = None, device_type: str = "cuda"
) -> Callable[[], object]:
    """``fn`` run on the fused route (``on``), the libtorch route (``not on``) or as it is (None),
    under ``torch.autocast(device_type, autocast)`` when ``autocast`` is a dtype."""
    if on is None and autocast is None:
        return fn
    from .cuda_kernels import enabled_route

    def run():
        with contextlib.ExitStack() as ctx:
            if on is not None:
                ctx.enter_context(enabled_route(on))
            if autocast is not None:
                ctx.enter_context(torch.autocast(device_type, dtype=autocast))
            return fn()

    return run


def bench_layers(
    device: torch.device,
    batch: int,
    repeats: int,
    compile_ref: bool,
    stages=STAGES,
    channels_last: bool = False,
    dtype=torch.float32,
    autocast: torch.dtype | None = None,
):
    from .nn import IcConv2d

    rows = []
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for name, c, hw, stride in stages:
        torch.manual_seed(0)
        conv = nn.Conv2d(c, c, 3, stride, 1, bias=False).to(device, dtype).to(memory_format=fmt)
        ic = IcConv2d.from_conv(conv, alpha=ALPHA, alpha_mode=ALPHA_MODE).to(memory_format=fmt)
        ref = _Reference(ic)
        variants = {"conv": conv, "ic": ic, "reference": ref}
        routes = {}  # variant -> fused route on/off for the IcConv2d variants on CUDA
        if fused_available(device):
            variants["ic-fused"] = ic
            routes = {"ic": False, "ic-fused": True}
        if compile_ref:
            variants["compiled"] = torch.compile(ref)
        x = torch.randn(batch, c, hw, hw, device=device, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()

        def as_variant(fn, k):  # on the variant's route, under the autocast asked for
            return _routed(fn, routes.get(k), autocast, device.type)

        go = torch.randn_like(as_variant(lambda: conv(x), "conv")().detach())

        def fwd(m):
            return lambda: m(x)

        def fwdbwd(m):
            def run():
                y = m(x)
                y.backward(go)
                x.grad = None
                for p in m.parameters():
                    p.grad = None

            return run

        def infer(m):
            def run():
                with torch.no_grad():
                    m(x)

            return run

        t_f = _interleaved({k: as_variant(fwd(m), k) for k, m in variants.items()}, device, repeats)
        t_fb = _interleaved({k: as_variant(fwdbwd(m), k) for k, m in variants.items()}, device, repeats)
        t_i = _interleaved({k: as_variant(infer(m), k) for k, m in variants.items()}, device, repeats)
        # each variant's own parameters and buffers (the reference's are the IC layer's) and x are kept anyway
        saved = {
            k: _saved_bytes(as_variant(lambda m=m: m(x), k), list(m.parameters()) + list(m.buffers()) + [x])
            for k, m in variants.items()
            if k != "compiled"
        }
        out_bytes = go.numel() * go.element_size()
        for k in variants:
            rows.append(
                {
                    "shape": name,
                    "variant": k,
                    "fwd_ms": t_f[k] * 1e3,
                    "fwdbwd_ms": t_fb[k] * 1e3,
                    "infer_ms": t_i[k] * 1e3,
                    "saved_mb": saved[k] / 2**20 if k in saved else None,
                    "out_mb": out_bytes / 2**20,
                }
            )
        print(f"  measured {name}", file=sys.stderr, flush=True)
    return rows


def _last_level_cache_bytes(device: torch.device) -> int:
    """The largest cache in front of ``device``'s memory: the CUDA device's L2, or the CPU's highest
    cache level (Linux sysfs); 32 MiB where neither says."""
    if device.type == "cuda":
        return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 32 * 2**20
    best = (0, 0)  # (level, bytes)
    for d in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(f"{d}/level") as f:
                level = int(f.read())
            with open(f"{d}/size") as f:
                size = f.read().strip()
        except (OSError, ValueError):
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:].upper(), 1)
        digits = size.rstrip("KMGkmg")
        if digits.isdigit():
            best = max(best, (level, int(digits) * scale))
    return best[1] or 32 * 2**20


def copy_bandwidth(device: torch.device, repeats: int = 5, nbytes: int | None = None) -> float:
    """Bytes per second of a STREAM-like copy, ``dst.copy_(src)`` on float32 buffers of ``nbytes``
    each (default: 4x the last-level cache, at least 64 MiB), on ``device`` with torch's current
    thread count: 2 x ``nbytes`` moved per copy (a read and a write, as STREAM counts them), the
    fastest of ``repeats`` after one warm-up copy (pages touched beforehand)."""
    nbytes = nbytes or max(4 * _last_level_cache_bytes(device), 64 * 2**20)
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.zeros_like(src)
    dst.copy_(src)
    best = min(_time(lambda: dst.copy_(src), device) for _ in range(max(1, repeats)))
    return 2 * src.numel() * 4 / best


def floor_model(
    layer_rows, stages, batch: int, bandwidth: float, dtype=torch.float32, autocast: torch.dtype | None = None
):
    """The floor rows (:func:`ic_networks.bench_floor.floor_rows`) of :func:`bench_layers`' rows:
    activations of the autocast dtype when one is given (autocast casts x, y, u and the gradients),
    else of ``dtype``; the saved relu state a bit mask while alpha is fixed, else relu(z) itself."""
    act = (autocast or dtype).itemsize
    state = act if ALPHA_MODE == "learnable" else 1 / 8
    return bench_floor.floor_rows(layer_rows, stages, batch, bandwidth, act, state)


def conv_shares(plain: nn.Module, ic: nn.Module, infer: Callable[[], object], device: torch.device, repeats: int = 3):
    """``[(LayerShape, share)]`` for the IC layers of ``ic``: the shape of the conv of ``plain``
    that each replaces (same module name) and that conv's share of ``infer()``, the plain model's
    eval forward, timed with forward hooks on those convs over ``repeats`` runs after one warm-up
    (the hooks slow only these runs, not the timed ones)."""
    from .nn import IcConv2d

    convs = {k: plain.get_submodule(k) for k, m in ic.named_modules() if isinstance(m, IcConv2d)}
    spent = dict.fromkeys(convs, 0.0)
    shapes: dict[str, bench_floor.LayerShape] = {}
    started: dict[str, float] = {}

    def pre(name):
        def hook(m, args):
            _sync(device)
            started[name] = time.perf_counter()

        return hook

    def post(name):
        def hook(m, args, out):
            _sync(device)
            spent[name] += time.perf_counter() - started[name]
            if name in shapes:  # read in the warm-up
                return
            n, c, h, w = args[0].shape
            if m.kernel_size[0] != m.kernel_size[1] or m.dilation != (1, 1) or m.stride[0] != m.stride[1]:
                raise ValueError(f"{name}: the floor model takes square kernels and strides, no dilation")
            shapes[name] = bench_floor.LayerShape(
                n, c, m.out_channels, h, w, m.kernel_size[0], m.stride[0], m.padding[0], m.groups
            )

        return hook

    handles = [
        h for k, m in convs.items() for h in (m.register_forward_pre_hook(pre(k)), m.register_forward_hook(post(k)))
    ]
    try:
        infer()
        spent = dict.fromkeys(convs, 0.0)
        total = sum(_time(infer, device) for _ in range(repeats))
    finally:
        for h in handles:
            h.remove()
    return [(shapes[k], spent[k] / total) for k in convs]


def bench_models(
    device: torch.device,
    batch: int,
    size: int,
    repeats: int,
    names=("resnet18", "resnet50"),
    autocast: torch.dtype | None = None,
    channels_last: bool = False,
    bandwidth: float | None = None,
):
    """Per model of ``names`` and its IC version: one SGD train step and one eval-mode forward under
    ``no_grad`` (each timed interleaved, median of ``repeats``), and the train step's peak memory;
    models and batch in channels_last with ``channels_last``. With ``bandwidth`` (bytes per second,
    :func:`copy_bandwidth`), the IC rows carry the eval forward's floor (``infer_floor_ms``,
    :func:`conv_shares`)."""
    import torchvision

    from . import models as icm

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    rows = []
    for name in names:
        torch.manual_seed(0)
        pair = {name: getattr(torchvision.models, name)(), f"ic_{name}": getattr(icm, f"ic_{name}")()}
        routes = {}
        if fused_available(device):
            pair[f"ic_{name}-fused"] = pair[f"ic_{name}"]  # the same model on the fused route
            routes = {f"ic_{name}": False, f"ic_{name}-fused": True}
        x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, 1000, (batch,), device=device)
        steps, infers = {}, {}
        for k, m in pair.items():
            m.to(device, memory_format=fmt)
            opt = torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9)

            def step(m=m, opt=opt):
                m.train()
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(m(x), y).backward()
                opt.step()

            def infer(m=m):
                m.eval()
                with torch.no_grad():
                    return m(x)

            steps[k] = _routed(step, routes.get(k), autocast, device.type)
            infers[k] = _routed(infer, routes.get(k), autocast, device.type)
        t = _interleaved(steps, device, repeats, warmup=1)
        t_infer = _interleaved(infers, device, repeats, warmup=1)
        peak = {}  # one more step each, apart from the timed ones (the CPU profiler slows what it records)
        for k, m in pair.items():
            for p in m.parameters():  # the last step's gradients are not resident: the measured step makes its own
                p.grad = None
            peak[k] = bench_memory.step_peak_bytes(steps[k], device)
        floor = None
        if bandwidth:
            shares = conv_shares(pair[name], pair[f"ic_{name}"], infers[name], device, repeats)
            act = (autocast or torch.float32).itemsize
            floor = bench_floor.model_eval_floor(t_infer[name] * 1e3, shares, bandwidth, act)
        for k in pair:
            plain = peak[k.removeprefix("ic_").removesuffix("-fused")]
            rows.append(
                {
                    "model": k,
                    "step_ms": t[k] * 1e3,
                    "infer_ms": t_infer[k] * 1e3,
                    "peak_mb": peak[k] / 2**20,
                    "peak_over_plain": peak[k] / plain if plain else None,
                    "batch": batch,
                    "image_size": size,
                    "channels_last": channels_last,
                    **({"infer_floor_ms": floor["floor_ms"]} if floor and k != name else {}),
                }
            )
        print(f"  measured {name}", file=sys.stderr, flush=True)
    return rows


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"{cpu} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _mb(v: float | None, fmt: str) -> str:
    """A saved-bytes figure, or ``n/a`` where it was not measured (None; NaN in older JSON files)."""
    return "n/a" if v is None or v != v else format(v, fmt)


def format_tables(
    layer_rows, model_rows, device, batch, autocast: str | None = None, dtype=torch.float32, floor_rows=()
) -> str:
    """The Markdown tables. The first line names the device, the precision and the sizes of the
    tables printed: ``batch`` for the layer rows, the rows' own batch and image size for the models.
    With ``floor_rows`` (:func:`floor_model`) the floor table follows the layer table."""
    precision = str(dtype).removeprefix("torch.") + (f" under {autocast} autocast" if autocast else "")
    sizes = [f"layer batch N={batch}"] if layer_rows else []
    if model_rows and "batch" in model_rows[0]:
        r = model_rows[0]
        cl = ", channels_last" if r.get("channels_last") else ""
        sizes.append(f"model batch N={r['batch']} at {r['image_size']}x{r['image_size']}{cl}")
    out = [f"Device: {machine_description(device)}; {', '.join(sizes + [precision])}.", ""]
    if layer_rows:
        fused = any(r["variant"] == "ic-fused" for r in layer_rows)
        out += [
            "| shape | variant | fwd ms | fwd+bwd ms | infer ms | saved MB | fwd / conv | fwd+bwd / conv "
            "| infer / conv | saved - conv (outputs) | ref / ic (fwd+bwd) |"
            + (" ref / ic-fused (fwd+bwd) |" if fused else ""),
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if fused else ""),
        ]
        by = {(r["shape"], r["variant"]): r for r in layer_rows}

        def speed(r, of):  # r's fwd+bwd time over variant `of`'s: the speed-up of `of` over r
            o = by.get((r["shape"], of))
            return "" if o is None or r["variant"] in ("conv", of) else f"{r['fwdbwd_ms'] / o['fwdbwd_ms']:.2f}x"

        for r in layer_rows:
            base = by[(r["shape"], "conv")]
            measured = r["saved_mb"] is not None and r["saved_mb"] == r["saved_mb"]
            extra = (r["saved_mb"] - base["saved_mb"]) / r["out_mb"] if measured else None
            out.append(
                f"| {r['shape']} | {r['variant']} | {r['fwd_ms']:.2f} | {r['fwdbwd_ms']:.2f} | {r['infer_ms']:.2f} "
                f"| {_mb(r['saved_mb'], '.1f')} | {r['fwd_ms'] / base['fwd_ms']:.2f}x "
                f"| {r['fwdbwd_ms'] / base['fwdbwd_ms']:.2f}x | {r['infer_ms'] / base['infer_ms']:.2f}x | "
                f"{_mb(extra, '+.2f')} | {speed(r, 'ic')} |" + (f" {speed(r, 'ic-fused')} |" if fused else "")
            )
        out.append("")
    out += bench_floor.format_floor_lines(list(floor_rows), layer_rows)
    if model_rows:
        floors = any("infer_floor_ms" in r for r in model_rows)
        out += [
            "| model | train step ms | / plain | eval forward ms | / plain | peak MB | ic / plain peak |"
            + (" eval floor / plain | eval ic / floor |" if floors else ""),
            "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if floors else ""),
        ]
        by = {r["model"]: r for r in model_rows}
        for r in model_rows:
            plain = by[r["model"].removeprefix("ic_").removesuffix("-fused")]
            peak, plain_peak = r.get("peak_mb"), plain.get("peak_mb")  # n/a for rows without a peak
            ratio = "n/a" if peak is None or not plain_peak else f"{peak / plain_peak:.2f}x"
            inf, plain_inf = r.get("infer_ms"), plain.get("infer_ms")
            inf_ratio = "n/a" if inf is None or not plain_inf else f"{inf / plain_inf:.2f}x"
            floor = r.get("infer_floor_ms")
            floor_cells = (
                "" if not floors else "  |  |" if floor is None else f" {floor / plain_inf:.2f}x | {inf / floor:.2f}x |"
            )
            out.append(
                f"| {r['model']} | {r['step_ms']:.1f} | {r['step_ms'] / plain['step_ms']:.2f}x "
                f"| {_mb(inf, '.1f')} | {inf_ratio} | {_mb(peak, '.1f')} | {ratio} |" + floor_cells
            )
        out.append("")
    return "\n".join(out)
