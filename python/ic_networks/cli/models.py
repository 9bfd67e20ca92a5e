"""Verbs ``ic-networks flops`` and ``ic-networks convert``.

* ``ic-networks flops NAME [--input-size ...]``: parameters and multiply-adds of the plain model
  against its IC version (:func:`ic_networks.profile`; the models are built on the meta
  device, so nothing is allocated). ``NAME`` is a zoo name, plain (``resnet50``) or IC
  (``ic_resnet50_b``).
* ``ic-networks convert --model NAME --weights PATH --out PATH``: loads a plain checkpoint (a local
  state_dict file, e.g. torchvision's ``resnet50-0676ba61.pth``) into the IC model, with W' random,
  b1 = 0 and alpha = 0 (learnable), and writes the IC state_dict atomically
  (:func:`ic_networks.io.atomic_save`). The result loads with ``ic_networks.models.<ic name>(weights=OUT)``.
* ``ic-networks diagnose NAME [--weights PATH]``: per IC layer, the ratio
  std(alpha relu(Z)) / std(conv) on a probe batch (:func:`ic_networks.diagnostics.branch_ratios`):
  Fashion-MNIST test images (resized and repeated to the model's input; the default) or Gaussian
  noise. The model, built afresh (and loaded from ``--weights``), runs in train mode (batch
  statistics) unless ``--eval``; nothing is written.
"""

import argparse

import torch

from ..io import atomic_save
from ..models._common import load_local, resolve_weights
from ..models._zoo import ZOO, lookup
from ..nn import ic_layers
from ..profiling import profile
from .common import add_out_argument, add_verb, positive_int

__all__ = ["register"]


def _input_size(values, default):
    if values is None:
        return default
    if len(values) == 1:
        return default[:2] + (values[0], values[0])
    if len(values) == 2:
        return default[:2] + tuple(values)
    if len(values) == 4:
        return tuple(values)
    raise ValueError(f"--input-size: expected S, H W or N C H W, got {values}")


def _unit(value: float):
    """``(divisor, prefix)`` that shows ``value`` with 1 to 3 digits before the point (G, M, K)."""
    for div, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if value >= div:
            return div, prefix
    return 1.0, ""


def _flops(args) -> int:
    entry = lookup(args.name)
    size = _input_size(args.input_size, entry.input_size)
    with torch.device("meta"):
        rows = [(entry.plain_name, profile(entry.plain(), size)), (entry.name, profile(entry.ic(), size))]
    base = rows[0][1]
    md, m = _unit(base.macs)  # one unit for every multiply-add column, chosen by the plain model
    pd, pp = _unit(base.params)
    print(
        f"input {tuple(size)}; multiply-adds as in ic_networks.profile (box-sum additions listed apart); "
        "K = 10^3, M = 10^6, G = 10^9"
    )
    header = (
        f"{'model':<26}{'params':>10}{m + 'MACs':>9}{'IC layers':>11}{'IC params':>11}{'W1x1 ' + m + 'MACs':>12}"
        f"{'elem ' + m + 'MACs':>12}{'box ' + m + 'adds':>11}{'d MACs':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, p in rows:
        print(
            f"{name:<26}{p.params / pd:>9.2f}{pp or ' '}{p.macs / md:>9.2f}{p.ic_layers:>11}"
            f"{p.ic_params / pd:>10.2f}{pp or ' '}"
            f"{p.ic_macs_adjust / md:>12.3f}{p.ic_macs_elementwise / md:>12.4f}{p.ic_box_sum_adds / md:>11.4f}"
            f"{100.0 * (p.macs - base.macs) / base.macs:>+8.1f}%"
        )
    return 0


def _convert(args) -> int:
    entry = lookup(args.model)
    path = resolve_weights(args.weights)  # a missing file fails before the model is built
    model = load_local(entry.ic(alpha=0.0, alpha_mode="learnable"), path)
    atomic_save(model.state_dict(), args.out)
    n = len(ic_layers(model))
    print(f"{entry.name}: {n} IC layers (alpha = 0, output identical to {entry.plain_name}); wrote {args.out}")
    return 0


def _probe(kind: str, size, data) -> torch.Tensor:
    n, c, h, w = size
    if kind == "noise":
        return torch.randn(size, generator=torch.Generator().manual_seed(0))
    from ..training.data import load_fashion_mnist

    x, _ = load_fashion_mnist(data, train=False)
    x = x[:n].float().div(255.0) if x.dtype == torch.uint8 else x[:n].float()
    x = (x - x.mean()) / x.std()
    if (h, w) != tuple(x.shape[-2:]):
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x.expand(-1, c, -1, -1).contiguous()


def _diagnose(args) -> int:
    from ..diagnostics import branch_ratios, format_branch_ratios

    entry = lookup(args.name)
    size = _input_size(args.input_size, entry.input_size)
    size = (args.batch,) + tuple(size[1:])
    weights = resolve_weights(args.weights)
    if args.alpha is None:
        model = load_local(entry.ic(), weights)
    else:  # --alpha wins over a plain checkpoint's alpha = 0
        model = load_local(entry.ic(alpha=args.alpha), weights, plain_alpha=args.alpha)
    model.train(not args.eval)
    stats = branch_ratios(model, _probe(args.probe, size, args.data))
    print(f"{entry.name}, {'eval' if args.eval else 'train'} mode, probe: {args.probe} {tuple(size)}")
    print(format_branch_ratios(stats))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    names = ", ".join(sorted(ZOO))
    p = add_verb(
        sub,
        "flops",
        help="params and multiply-adds of a plain model against its IC version",
        description=f"Models: {names} (or their plain names).",
    )
    p.add_argument("name", help="zoo model, plain or IC name (e.g. resnet50, ic_resnet50_b)")
    p.add_argument(
        "--input-size",
        type=positive_int,
        nargs="+",
        metavar="N",
        help="S (square), H W, or N C H W; default: the model's (224 ImageNet, 32 CIFAR, 28 FMNIST)",
    )
    p.set_defaults(func=_flops)

    p = add_verb(
        sub,
        "convert",
        help="turn a plain checkpoint into an IC state_dict (alpha = 0)",
        description=f"Models: {names} (or their plain names).",
    )
    p.add_argument("--model", required=True, help="zoo model, plain or IC name (e.g. resnet50)")
    p.add_argument("--weights", required=True, help="local state_dict file of the plain model")
    add_out_argument(p, "where to write the IC state_dict", required=True, metavar="PATH")
    p.set_defaults(func=_convert)

    p = add_verb(
        sub,
        "diagnose",
        help="per IC layer: std(alpha relu(Z)) / std(conv) on a probe batch",
        description=f"Models: {names} (or their plain names).",
    )
    p.add_argument("name", help="zoo model, plain or IC name (e.g. ic_resnet50)")
    p.add_argument("--weights", help="local state_dict of the IC model (default: random initialisation)")
    p.add_argument("--alpha", type=float, help="alpha of every IC layer (default: the builder's, 1 from scratch)")
    p.add_argument(
        "--probe",
        choices=("fmnist", "noise"),
        default="fmnist",
        help="Fashion-MNIST test images resized to the input (default) or Gaussian noise",
    )
    p.add_argument("--data", help="Fashion-MNIST IDX folder (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--batch", type=positive_int, default=16, help="probe batch size (default 16)")
    p.add_argument("--input-size", type=positive_int, nargs="+", metavar="N", help="S or H W (default: the model's)")
    p.add_argument("--eval", action="store_true", help="eval mode (running BatchNorm statistics)")
    p.set_defaults(func=_diagnose)
