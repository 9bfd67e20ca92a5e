"""``branch_ratios``: how much of each IC layer's output the IC branch carries, on a real batch.

For an IC layer ``u = Y + alpha * relu(Z) + b2`` with ``Y = conv(X, W)`` and
``Z = Y - conv1x1(boxsum(X), W') + b1``, the diagnostic reports, per layer,

* ``ratio = std(alpha * relu(Z)) / std(Y)``: 0 means the layer is its plain conv, 1 means the
  branch is as large as the conv; the standard deviations are over the whole batch output;
* ``active``: the fraction of ``Z > 0`` (where the branch is open);
* ``alpha`` and the two standard deviations themselves.

``relu(Z)`` comes from the layer's own op (``torch.ops.ic_networks.ic_conv2d_forward``, the Rust
core), ``Y`` from ``torch.nn.functional.conv2d`` with the layer's weights. The model runs once in
its current train/eval mode under ``no_grad`` (in train mode BatchNorm's running statistics
move: pass a model in eval mode, or a copy, to leave it untouched). ``ic-networks diagnose``
prints the table for a model of the zoo.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nn import IcConv2d

__all__ = ["BranchStats", "branch_ratios", "format_branch_ratios"]


@dataclass(frozen=True)
class BranchStats:
    name: str  # qualified module name, as in model.named_modules()
    ratio: float  # std(alpha * relu(Z)) / std(conv(X, W))
    active: float  # fraction of Z > 0
    alpha: float
    conv_std: float
    branch_std: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _layer_stats(name: str, m: IcConv2d, x: Tensor) -> BranchStats:
    xp = m.op_input(x)
    batched = xp if xp.dim() == 4 else xp.unsqueeze(0)
    _, relu_z = torch.ops.ic_networks.ic_conv2d_forward(
        batched,
        m.weight,
        m.adjust_weight,
        m.adjust_bias,
        m.alpha,
        None,
        list(m.stride),
        list(m._ic_padding),
        list(m.dilation),
        m.groups,
    )
    y = F.conv2d(batched, m.weight, None, m.stride, m._ic_padding, m.dilation, m.groups)
    alpha = float(m.alpha.detach())
    branch = (alpha * relu_z.double()).std().item()
    conv = y.double().std().item()
    ratio = branch / conv if conv > 0 else float("inf") if branch > 0 else 0.0
    return BranchStats(name, ratio, (relu_z > 0).double().mean().item(), alpha, conv, branch)


def branch_ratios(model: nn.Module, x: Tensor) -> list[BranchStats]:
    """Runs ``model(x)`` once (no gradient) and returns one :class:`BranchStats` per ``IcConv2d``
    of ``model``, in the order of ``model.named_modules()`` (see the module docstring)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, IcConv2d)]
    if not layers:
        raise ValueError("model: it has no IcConv2d layer (convert it with ic_networks.convert first)")
    found: dict[str, BranchStats] = {}
    handles = []
    for name, m in layers:

        def hook(mod, inputs, _out, name=name):
            if name not in found:  # a layer called twice: its first call
                found[name] = _layer_stats(name, mod, inputs[0])

        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [found[n] for n, _ in layers if n in found]


def format_branch_ratios(stats: list[BranchStats]) -> str:
    """A Markdown table of :func:`branch_ratios`, with the mean ratio as the last row."""
    lines = ["| layer | alpha | std(conv) | std(alpha relu(Z)) | ratio | Z > 0 |", "|---|---:|---:|---:|---:|---:|"]
    for s in stats:
        lines.append(
            f"| {s.name} | {s.alpha:.4g} | {s.conv_std:.4g} | {s.branch_std:.4g} | {s.ratio:.3f} "
            f"| {100 * s.active:.1f}% |"
        )
    if stats:
        mean = sum(s.ratio for s in stats) / len(stats)
        lines.append(f"| mean of {len(stats)} layers | | | | {mean:.3f} | |")
    return "\n".join(lines)
