"""Verb ``ic-networks bench``: the tables of :mod:`ic_networks.bench` (layer and model benchmarks)."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .. import bench
from ..io import atomic_write_text
from .common import RAW, UsageError, add_device_argument, add_verb, positive_int, resolve_device

__all__ = ["register"]


def run(args) -> int:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.skip_layers and args.skip_models:
        raise UsageError("--skip-layers with --skip-models leaves nothing to measure")
    stages = [s for s in bench.STAGES if not args.shapes or s[0] in args.shapes.split(",")]
    if args.shapes and not stages:
        raise ValueError(f"--shapes: expected names from {[s[0] for s in bench.STAGES]}, got {args.shapes!r}")
    print(f"ic-networks bench on {bench.machine_description(device)}", file=sys.stderr)
    amp = bench.AUTOCAST[args.autocast] if args.autocast else None
    layer_rows, floor_rows, bandwidth = [], [], None
    if not args.skip_layers:
        # the copy bandwidth before and after the layers (same process and threads), the faster kept
        bandwidth = bench.copy_bandwidth(device)
        layer_rows = bench.bench_layers(
            device, args.batch, args.repeats, not args.no_compile, stages, args.channels_last, autocast=amp
        )
        bandwidth = max(bandwidth, bench.copy_bandwidth(device))
        floor_rows = bench.floor_model(layer_rows, stages, args.batch, bandwidth, autocast=amp)
    model_rows = []
    if not args.skip_models:
        if bandwidth is None:  # the models' eval floor prices their memory passes at it too
            bandwidth = bench.copy_bandwidth(device)
        model_rows = bench.bench_models(
            device,
            args.model_batch,
            args.image_size,
            args.model_repeats,
            autocast=amp,
            channels_last=args.channels_last,
            bandwidth=bandwidth,
        )
    text = bench.format_tables(layer_rows, model_rows, device, args.batch, args.autocast, floor_rows=floor_rows)
    print(text)
    if args.json:
        doc = {
            "device": bench.machine_description(device),
            "autocast": args.autocast,
            "layer_batch": args.batch,
            "layers": layer_rows,
            "copy_bandwidth_gbs": None if bandwidth is None else bandwidth / 1e9,
            "floor": floor_rows,
            "models": model_rows,
        }
        atomic_write_text(json.dumps(doc, indent=1) + "\n", args.json)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_device_argument(p, default="cpu")
    p.add_argument("--batch", type=positive_int, default=32, help="layer benchmark batch size (default 32)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed repeats per variant (default 5)")
    p.add_argument("--shapes", default="", help="comma-separated subset of " + ",".join(s[0] for s in bench.STAGES))
    p.add_argument("--channels-last", action="store_true", help="run the layer and model benchmarks in channels_last")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    p.add_argument(
        "--autocast",
        choices=sorted(bench.AUTOCAST),
        default=None,
        help="run every row under torch.autocast with this dtype (float32 weights and inputs)",
    )
    p.add_argument("--skip-layers", action="store_true")
    p.add_argument("--skip-models", action="store_true")
    p.add_argument("--model-batch", type=positive_int, default=8, help="train-step batch size (default 8)")
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--model-repeats", type=positive_int, default=3)
    p.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--json", default="", help="also write the raw numbers as JSON here")


def register(sub) -> None:
    p = add_verb(
        sub,
        "bench",
        help="benchmark the IC layer and IC-ResNets against plain ones",
        description=bench.__doc__.split("\n\n", 1)[1],
        formatter_class=RAW,
    )
    add_arguments(p)
    p.set_defaults(func=run)
