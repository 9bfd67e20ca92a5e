"""The floor model of the IC layer's cost: the least time this formulation can take on the machine
that runs the benchmark, per layer shape and mode (``fwd+bwd``, ``infer``)::

    floor = t_conv + extra_macs / rate + extra_bytes / bandwidth
    rate  = conv_macs / t_conv          (the conv's own measured multiply-add rate, same mode)

``t_conv`` is the measured time of the plain 3x3 conv (``nn.Conv2d``) in the same run, which the IC
layer computes as it is (``Yb``); ``conv_macs`` its multiply-adds (3x the forward's for fwd+bwd: the
forward, the input gradient and the weight gradient); ``extra_macs`` the IC branch's arithmetic
(:func:`extra_macs`); ``extra_bytes`` the memory passes a fully fused IC branch still needs beyond
the conv's own (:func:`memory_passes`); ``bandwidth`` a STREAM-like copy measured in the same process
(:func:`ic_networks.bench.copy_bandwidth`).

The model is a lower bound for this formulation with the conv as it is: the 1x1 runs at the rate of
the 3x3 conv (a GEMM with a K of C_in instead of 9 C_in, so in practice slower), the box sum's adds are
counted as half a multiply-add (one flop against two), the elementwise arithmetic of the collision is
left out (it hides under the memory passes), and every tensor the branch touches moves once, at copy
bandwidth. Compute and memory time are added, as for a branch that runs after the conv.

For a whole model's eval forward (:func:`model_eval_floor`) the same bound is summed over its IC
layers: the plain model's measured time plus, per layer, the branch's extra MACs at the rate of the
plain conv it replaces (that conv's share of the plain forward, timed in the same run) and the
``infer`` memory passes at copy bandwidth.

Everything here is arithmetic on given numbers (no timing): :func:`floor_rows` turns the measured
layer rows of :func:`ic_networks.bench.bench_layers` and a bandwidth into floor rows, and
:func:`format_floor_lines` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "LayerShape",
    "conv_macs",
    "extra_macs",
    "extra_bytes",
    "floor_time",
    "floor_rows",
    "format_floor_lines",
    "memory_passes",
    "model_eval_floor",
    "stage_shape",
]

MODES = (("fwd+bwd", "fwdbwd_ms"), ("infer", "infer_ms"))  # floor mode -> the layer rows' time column


@dataclass(frozen=True)
class LayerShape:
    """One IC layer: input (n, c_in, h, w), a k x k kernel (dilation 1) with this stride and
    padding, c_out output channels, in ``groups`` groups."""

    n: int
    c_in: int
    c_out: int
    h: int
    w: int
    k: int = 3
    stride: int = 1
    padding: int = 1
    groups: int = 1

    @property
    def ho(self) -> int:
        return (self.h + 2 * self.padding - self.k) // self.stride + 1

    @property
    def wo(self) -> int:
        return (self.w + 2 * self.padding - self.k) // self.stride + 1

    @property
    def x_elems(self) -> int:
        """Elements of the input x (and of its gradient dx)."""
        return self.n * self.c_in * self.h * self.w

    @property
    def out_elems(self) -> int:
        """Elements of one output-sized tensor (y, u, the output gradient, relu(z))."""
        return self.n * self.c_out * self.ho * self.wo

    @property
    def s_elems(self) -> int:
        """Elements of the box sum S (C_in channels on the output grid)."""
        return self.n * self.c_in * self.ho * self.wo


def stage_shape(stage, batch: int) -> LayerShape:
    """The layer of a :data:`ic_networks.bench.STAGES` entry ``(name, channels, size, stride)``: a 3x3
    conv C -> C, padding 1, groups 1, at this batch size."""
    _, c, hw, stride = stage
    return LayerShape(batch, c, c, hw, hw, 3, stride, 1, 1)


def conv_macs(s: LayerShape) -> int:
    """Multiply-adds of the k x k conv's forward: one per output element and tap of its group's
    input channels. Its backward does twice this (input gradient and weight gradient)."""
    return s.out_elems * (s.c_in // s.groups) * s.k * s.k


def extra_macs(s: LayerShape) -> dict[str, float]:
    """The IC branch's arithmetic beyond the conv, in multiply-adds (MACs), at the minimum.

    * ``one_by_one``: the 1x1 conv P = conv1x1(S, W'), C_out * C_in/g * Ho * Wo * N MACs, i.e.
      1/k^2 of the conv's forward.
    * ``box_adds``: one box sum, as separable running sums: per output position and channel,
      min(k - 1, 2) adds along each axis, over min(C_in, C_out) channels (at stride 1 the box sum
      and the 1x1 commute, so it can run on whichever side has fewer channels). An add is one flop,
      a MAC two, so the adds count as half a MAC each.
    * ``fwd``: the 1x1 forward plus one box sum.
    * ``bwd``: the 1x1's input gradient and weight gradient (twice its forward) plus one transposed
      box sum (the gradient into x). The box sum that dW' needs is not recomputed: at stride 1,
      dW' = boxsum^T(gz) x^T reuses the transposed box sum; elsewhere S could be kept.
    * ``conv_fwd``: the conv's own forward MACs (:func:`conv_macs`), for reference.

    The collision's elementwise arithmetic (subtract, relu, scale, add; the gradient's mask and the
    alpha/bias reductions) is a few flops per output element, left out: it hides under the memory
    passes of :func:`memory_passes`.
    """
    one_by_one = s.out_elems * (s.c_in // s.groups)
    box_adds = s.n * min(s.c_in, s.c_out) * s.ho * s.wo * 2 * min(s.k - 1, 2)
    return {
        "conv_fwd": conv_macs(s),
        "one_by_one": one_by_one,
        "box_adds": box_adds,
        "fwd": one_by_one + box_adds / 2,
        "bwd": 2 * one_by_one + box_adds / 2,
    }


def memory_passes(s: LayerShape, act_bytes: float, state_bytes: float) -> list[tuple[str, str, float]]:
    """The tensor-sized memory passes a fully fused IC branch needs beyond the conv's own, as
    ``(when, what, bytes)``; ``when`` is ``"fwd"`` (every forward), ``"train"`` (a forward that
    saves for the backward) or ``"bwd"``.

    ``act_bytes`` is the size of an activation element (x, y, u and their gradients: 4 in float32,
    2 under bf16/fp16 autocast, which casts them), ``state_bytes`` that of the saved relu state per
    output element (``act_bytes`` when alpha learns, as d alpha needs relu(z); 1/8 for a bit mask of
    z > 0 when alpha is fixed). The conv is a black box: what it reads and writes (x, W, y; in the
    backward its output gradient and dx) is in its measured time, so the branch reads x and y again.
    S, P and gz never leave the cache (they are made per tile and used there).

    Forward (``fwd``, ``train``):

    1. read x for the box sum;
    2. read y, the conv's output;
    3. write u;
    4. (training) write the saved relu state.

    Backward (``bwd``):

    5. read the output gradient g;
    6. read the saved relu state (gz = alpha * g * [z > 0] is made per tile from it);
    7. write g + gz, the gradient into y that the conv's backward takes instead of g;
    8. read x again for dW' (or, when smaller, the box sum S: written in the forward and read
       here, 2 x S; at stride 2 S is a quarter of x);
    9. read and write dx, to add the P path's part, boxsum^T(W'^T gz), to the conv's.
    """
    x = s.x_elems * act_bytes
    out = s.out_elems * act_bytes
    state = s.out_elems * state_bytes
    return [
        ("fwd", "read x for the box sum", x),
        ("fwd", "read y, the conv's output", out),
        ("fwd", "write u", out),
        ("train", "write the saved relu state", state),
        ("bwd", "read the output gradient g", out),
        ("bwd", "read the saved relu state", state),
        ("bwd", "write g + gz for the conv's backward", out),
        ("bwd", "read x (or write + read S) for dW'", min(x, 2 * s.s_elems * act_bytes)),
        ("bwd", "read and write dx to add the P path's part", 2 * x),
    ]


def extra_bytes(s: LayerShape, act_bytes: float, state_bytes: float) -> dict[str, float]:
    """The bytes of :func:`memory_passes` per mode: ``infer`` (a no_grad forward: passes 1-3) and
    ``fwd+bwd`` (all nine)."""
    passes = memory_passes(s, act_bytes, state_bytes)
    return {"infer": sum(b for when, _, b in passes if when == "fwd"), "fwd+bwd": sum(b for _, _, b in passes)}


def floor_time(conv_ms: float, conv_macs: float, extra_macs: float, extra_bytes: float, bandwidth: float):
    """``(floor_ms, macs_ms, memory_ms)``: the conv's time plus ``extra_macs`` at the conv's rate
    (``conv_macs`` in ``conv_ms``) plus ``extra_bytes`` at ``bandwidth`` bytes per second."""
    macs_ms = extra_macs * conv_ms / conv_macs
    memory_ms = extra_bytes / bandwidth * 1e3
    return conv_ms + macs_ms + memory_ms, macs_ms, memory_ms


def model_eval_floor(plain_ms: float, layers, bandwidth: float, act_bytes: float) -> dict[str, float]:
    """The floor of an IC model's eval forward (``no_grad``) from its plain model's measured time
    ``plain_ms`` and ``layers``, one ``(LayerShape, share)`` per IC layer: ``share`` is the
    fraction of the plain forward spent in the conv that the IC layer replaces. Each layer adds its
    branch's forward MACs at that conv's rate (``share * plain_ms`` for :func:`conv_macs`) and its
    ``infer`` memory passes (:func:`memory_passes`, activations of ``act_bytes``) at ``bandwidth``
    bytes per second. Returns ``floor_ms``, ``macs_ms``, ``memory_ms`` and ``floor_over_plain``."""
    macs_ms = sum(share * plain_ms * extra_macs(s)["fwd"] / conv_macs(s) for s, share in layers)
    memory_ms = sum(extra_bytes(s, act_bytes, act_bytes)["infer"] for s, _ in layers) / bandwidth * 1e3
    floor = plain_ms + macs_ms + memory_ms
    return {"floor_ms": floor, "macs_ms": macs_ms, "memory_ms": memory_ms, "floor_over_plain": floor / plain_ms}


def floor_rows(layer_rows, stages, batch: int, bandwidth: float, act_bytes: float, state_bytes: float):
    """One row per measured shape and mode (``fwd+bwd``, ``infer``): the conv's time, rate and
    MACs, the IC branch's extra MACs and bytes, their times, the floor, and each measured variant's
    time over the floor (``over_floor``)."""
    by = {(r["shape"], r["variant"]): r for r in layer_rows}
    rows = []
    for stage in stages:
        name = stage[0]
        if (name, "conv") not in by:
            continue
        s = stage_shape(stage, batch)
        macs = extra_macs(s)
        nbytes = extra_bytes(s, act_bytes, state_bytes)
        for mode, key in MODES:
            conv_ms = by[(name, "conv")][key]
            c_macs = conv_macs(s) * (3 if mode == "fwd+bwd" else 1)
            e_macs = macs["fwd"] + (macs["bwd"] if mode == "fwd+bwd" else 0)
            floor, macs_ms, memory_ms = floor_time(conv_ms, c_macs, e_macs, nbytes[mode], bandwidth)
            rows.append(
                {
                    "shape": name,
                    "mode": mode,
                    "conv_ms": conv_ms,
                    "conv_macs": c_macs,
                    "conv_gmacs_per_s": c_macs / conv_ms / 1e6,
                    "extra_macs": e_macs,
                    "macs_ms": macs_ms,
                    "extra_bytes": nbytes[mode],
                    "memory_ms": memory_ms,
                    "bandwidth_gbs": bandwidth / 1e9,
                    "act_bytes": act_bytes,
                    "state_bytes": state_bytes,
                    "floor_ms": floor,
                    "floor_over_conv": floor / conv_ms,
                    "over_floor": {v: r[key] / floor for (sh, v), r in by.items() if sh == name and v != "conv"},
                }
            )
    return rows


def format_floor_lines(rows, layer_rows) -> list[str]:
    """The floor table (Markdown lines): per shape and mode the floor's parts and ratios, beside
    ``ic / conv``, ``ic / floor`` and ``reference / ic`` (and the same for ``ic-fused`` when
    measured)."""
    if not rows:
        return []
    by = {(r["shape"], r["variant"]): r for r in layer_rows}
    ics = [v for v in ("ic", "ic-fused") if any(r["variant"] == v for r in layer_rows)]
    state = "bit mask" if rows[0]["state_bytes"] < 1 else f"{rows[0]['state_bytes']:g} bytes"
    out = [
        f"Floor = conv + the IC branch's extra MACs at the conv's rate + its minimal extra memory passes at "
        f"{rows[0]['bandwidth_gbs']:.1f} GB/s (copy bandwidth, same run); activations "
        f"{rows[0]['act_bytes']:g} bytes, saved relu state {state} per element.",
        "",
        "| shape | mode | conv ms | conv GMAC/s | + MACs ms | + memory ms | floor ms | floor / conv | "
        + " | ".join(f"{v} / conv | {v} / floor | reference / {v}" for v in ics)
        + " |",
        "|---|---|" + "---:|" * (6 + 3 * len(ics)),
    ]
    key = dict(MODES)
    for r in rows:
        cells = [
            r["shape"],
            r["mode"],
            f"{r['conv_ms']:.2f}",
            f"{r['conv_gmacs_per_s']:.1f}",
            f"{r['macs_ms']:.2f}",
            f"{r['memory_ms']:.2f}",
            f"{r['floor_ms']:.2f}",
            f"{r['floor_over_conv']:.2f}x",
        ]
        for v in ics:
            ic, ref = by.get((r["shape"], v)), by.get((r["shape"], "reference"))
            if ic is None:
                cells += ["", "", ""]
                continue
            t = ic[key[r["mode"]]]
            cells += [
                f"{t / r['conv_ms']:.2f}x",
                f"{t / r['floor_ms']:.2f}x",
                "" if ref is None else f"{ref[key[r['mode']]] / t:.2f}x",
            ]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    return out
