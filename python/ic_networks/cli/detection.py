"""Verbs ``ic-networks train-det`` and ``ic-networks eval-det``: torchvision IC detectors on local
PASCAL VOC.

``train-det`` writes ``<out>/last.pt`` after every epoch (atomically, :func:`ic_networks.io.atomic_save`;
``{'model', 'optimizer', 'scheduler', 'epoch', 'arch', 'args'}``), resumes from it when it exists,
and appends one JSON line per epoch to ``<out>/log.jsonl``. ``eval-det`` writes
``<out>/metrics.json``. Decision: the default learning rate is mmdetection's, linearly rescaled to
the batch size (0.02 x batch/16 for Faster R-CNN, 0.01 x batch/16 for RetinaNet). The mAP needs
the ``[detection]`` extra (``pip install "ic-networks[detection]"``).
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..detection import BUILDERS
from ..detection.loops import append_jsonl, evaluate, make_optimizer, train_one_epoch
from ..detection.voc import VOC_CLASSES, collate, voc_datasets
from ..io import atomic_save, atomic_write_text, load
from .common import (
    add_device_argument,
    add_out_argument,
    add_verb,
    add_workers_argument,
    positive_int,
    resolve_device,
)

__all__ = ["register", "train_det", "eval_det"]

BASE_LR = {"fasterrcnn_ic_resnet50_fpn": 0.02, "retinanet_ic_resnet50_fpn": 0.01}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--voc-root", required=True, help="directory holding VOCdevkit/VOC2007 (and VOC2012)")
    p.add_argument("--test-set", default="2007-test", help="VOC split to evaluate on (default 2007-test)")
    p.add_argument("--batch-size", type=positive_int, default=2)
    p.add_argument("--min-size", type=positive_int, default=600, help="shorter side after resizing")
    p.add_argument("--max-size", type=positive_int, default=1000, help="longer side at most")
    add_workers_argument(p, default=2)
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first N images (smoke runs)")
    add_device_argument(p)
    add_out_argument(p, "output directory", required=True)


def register(sub) -> None:
    p = add_verb(
        sub,
        "train-det",
        help="train an IC Faster R-CNN / RetinaNet on local PASCAL VOC (torchvision)",
        description="Writes OUT/last.pt after every epoch (and resumes from it when it exists), one JSON line per "
        "epoch to OUT/log.jsonl, and evaluates VOC mAP@0.5 after the last epoch (the [detection] extra). The default "
        "learning rate is mmdetection's, rescaled to the batch size. Only local files are read.",
    )
    p.add_argument("--model", choices=sorted(BUILDERS), default="fasterrcnn_ic_resnet50_fpn")
    _common(p)
    p.add_argument(
        "--train-sets",
        nargs="+",
        default=["2007-trainval", "2012-trainval"],
        help="VOC splits to train on (default VOC 07+12)",
    )
    p.add_argument("--epochs", type=positive_int, default=12)
    p.add_argument("--lr", type=float, default=None, help="default: mmdet's, rescaled to the batch size")
    p.add_argument(
        "--lr-steps",
        type=int,
        nargs="*",
        default=None,
        help="epochs at which the lr drops 10x (default: 2/3 and 11/12 of --epochs)",
    )
    p.add_argument("--warmup-iters", type=int, default=500)
    p.add_argument("--weights-backbone", default=None, help="local state_dict of a plain or IC ResNet-50")
    p.add_argument("--trainable-backbone-layers", type=int, default=None)
    p.add_argument("--ic-alpha", type=float, default=None, help="initial alpha (default 0 with a backbone, else 1)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after the last epoch")
    p.set_defaults(func=train_det)

    p = add_verb(
        sub,
        "eval-det",
        help="VOC mAP@0.5 of a train-det checkpoint",
        description="Evaluates a train-det checkpoint (last.pt) on a local VOC split and writes OUT/metrics.json "
        "(the [detection] extra).",
    )
    p.add_argument("--checkpoint", required=True, help="a train-det checkpoint (last.pt)")
    _common(p)
    p.set_defaults(func=eval_det)


def _plain_args(args) -> dict:
    """The command's options as plain values (stored in the checkpoint)."""
    return {k: (str(v) if isinstance(v, torch.device) else v) for k, v in vars(args).items() if k != "func"}


def _loader(ds, args, shuffle: bool) -> DataLoader:
    if args.limit is not None:
        ds = Subset(ds, range(min(args.limit, len(ds))))
    if len(ds) == 0:
        raise ValueError(f"--voc-root: the selected VOC split(s) under {args.voc_root!r} are empty")
    return DataLoader(
        ds,
        batch_size=args.batch_size,
        shuffle=shuffle,
        num_workers=args.workers,
        collate_fn=collate,
        drop_last=False,
        persistent_workers=False,
    )


def _build(arch: str, args, **kw) -> nn.Module:
    return BUILDERS[arch](num_classes=len(VOC_CLASSES) + 1, min_size=args.min_size, max_size=args.max_size, **kw)


def train_det(args) -> int:
    device = resolve_device(args.device)
    train_loader = _loader(voc_datasets(args.voc_root, args.train_sets, train=True), args, shuffle=True)
    test_loader = (
        None if args.no_eval else _loader(voc_datasets(args.voc_root, [args.test_set], train=False), args, False)
    )
    model = _build(
        args.model,
        args,
        weights_backbone=args.weights_backbone,
        trainable_backbone_layers=args.trainable_backbone_layers,
        ic_alpha=args.ic_alpha,
    ).to(device)
    lr = args.lr if args.lr is not None else BASE_LR[args.model] * args.batch_size / 16
    steps = args.lr_steps if args.lr_steps is not None else [round(args.epochs * 8 / 12), round(args.epochs * 11 / 12)]
    opt, sched = make_optimizer(model, lr, len(train_loader), steps, args.warmup_iters)
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "last.pt")
    start = 0
    if os.path.isfile(ckpt_path):
        ckpt = load(ckpt_path, "--out")
        if not isinstance(ckpt, dict) or ckpt.get("arch") != args.model:
            arch = ckpt.get("arch") if isinstance(ckpt, dict) else type(ckpt).__name__
            raise ValueError(f"--out: {ckpt_path} holds a {arch!r}, not a {args.model!r}; use another --out")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start = int(ckpt["epoch"])
        print(f"resuming from {ckpt_path} after epoch {start}")
    for epoch in range(start, args.epochs):
        print(f"epoch {epoch + 1}/{args.epochs}")
        losses = train_one_epoch(model, opt, sched, train_loader, device)
        atomic_save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch + 1,
                "arch": args.model,
                "args": _plain_args(args),
            },
            ckpt_path,
        )
        append_jsonl(os.path.join(args.out, "log.jsonl"), {"epoch": epoch + 1, **losses})
        print(f"  mean loss {losses['loss']:.4f}; checkpoint {ckpt_path}")
    if test_loader is not None:
        metrics = evaluate(model, test_loader, device)
        _write_metrics(args.out, metrics)
    return 0


def _write_metrics(out: str, metrics: dict[str, float]) -> None:
    path = os.path.join(out, "metrics.json")
    atomic_write_text(json.dumps(metrics, indent=2) + "\n", path)
    print(f"VOC mAP@0.5 = {metrics['map50']:.4f} (written to {path})")


def eval_det(args) -> int:
    ckpt = load(args.checkpoint, "--checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("arch") not in BUILDERS or "model" not in ckpt:
        raise ValueError(f"--checkpoint: {args.checkpoint!r} is not a train-det checkpoint (needs 'arch' and 'model')")
    device = resolve_device(args.device)
    # Built from scratch (BatchNorm2d), which in eval mode computes what a FrozenBatchNorm2d backbone
    # computes; only BatchNorm's num_batches_tracked counters may be missing from the checkpoint.
    model = _build(ckpt["arch"], args)
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"--checkpoint: does not match {ckpt['arch']}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    loader = _loader(voc_datasets(args.voc_root, [args.test_set], train=False), args, shuffle=False)
    os.makedirs(args.out, exist_ok=True)
    _write_metrics(args.out, evaluate(model.to(device), loader, device))
    return 0
