"""Verbs ``ic-networks train``, ``ic-networks eval``, ``ic-networks demo`` and ``ic-networks study``.

Multi-process training: ``torchrun --nproc_per_node=N -m ic_networks train --recipe ...`` (DDP;
gloo on CPU, nccl on GPU). Only local files are read; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from ..training.recipes import RECIPES, get_recipe
from ..training.schedules import milestones_every
from .common import (
    RAW,
    add_device_argument,
    add_out_argument,
    add_verb,
    add_workers_argument,
    nonnegative_int,
    positive_int,
    resolve_device,
)

__all__ = ["register"]


def _recipe_list() -> str:
    return "\n".join(f"  {n:18s} {r.description}" for n, r in sorted(RECIPES.items()))


def register(sub) -> None:
    p = add_verb(
        sub,
        "train",
        help="train a model by a named recipe (scratch or WLD)",
        formatter_class=RAW,
        description="Recipes:\n"
        + _recipe_list()
        + "\n\nUnder torchrun (--nproc_per_node=N) the run is data-parallel (DDP).",
    )
    p.add_argument("--recipe", required=True, choices=sorted(RECIPES), help="recipe name")
    p.add_argument(
        "--data",
        help="dataset folder (Fashion-MNIST: default /usr/share/datasets/fashion-mnist; "
        "CIFAR-10: the python batches; ImageNet: ImageFolder root with train/ and val/)",
    )
    p.add_argument("--model", help="model name (scratch: the model trained; wld: the plain teacher's architecture)")
    p.add_argument("--teacher", help="WLD: the trained plain model's weights (state_dict or checkpoint.pt)")
    add_out_argument(p, "run folder (default runs/<recipe>-<model>)")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--batch-size", type=positive_int, help="global batch size")
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-step", type=positive_int, help="divide the lr by 10 every N epochs (step schedule)")
    p.add_argument("--subset", type=positive_int, help="train on a fixed random subset of N images")
    p.add_argument("--alpha", choices=("learn", "ramp", "fixed"), help="WLD: learn alpha or ramp it by hand")
    p.add_argument("--alpha-end", type=float, help="WLD with --alpha ramp: final alpha (default 0.02)")
    p.add_argument(
        "--ic-lr-mult",
        type=float,
        metavar="M",
        help="learning rate of the IC branch's parameters (W', b1, alpha) = lr * M (default 1)",
    )
    p.add_argument("--ten-crop", action="store_true", default=None, help="also report 10-crop accuracy at the end")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if OUT holds a checkpoint")
    p.add_argument("--ckpt-every", type=nonnegative_int, default=0, metavar="N", help="also checkpoint every N steps")
    p.add_argument("--max-steps", type=positive_int, help="stop (with a checkpoint) after N steps")
    p.add_argument("--amp", action="store_true", help="mixed precision (bf16 on CPU, fp16 + GradScaler on CUDA)")
    add_workers_argument(p)
    p.add_argument("--seed", type=int, default=0)
    add_device_argument(p)
    p.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    p.set_defaults(func=_cmd_train)

    p = add_verb(
        sub,
        "eval",
        help="top-1/top-5 accuracy of trained weights, single-crop and 10-crop",
        description="Evaluates a run's checkpoint.pt (its recipe and model are stored in it), or a bare state_dict "
        'with --recipe and --model (the zoo name a training summary prints as "model"), on the recipe\'s '
        "validation or test set. Only local files are read.",
    )
    p.add_argument("--checkpoint", required=True, help="a run's checkpoint.pt, or a state_dict file with --model")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="dataset/model of this recipe (default: the checkpoint's)")
    p.add_argument("--model", help="model name (for a bare state_dict)")
    p.add_argument("--data", help="dataset folder (as for train)")
    p.add_argument("--ten-crop", action="store_true", help="also evaluate 10-crop (logits averaged)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--amp", action="store_true", help="mixed precision (bf16 on CPU, fp16 on CUDA)")
    add_workers_argument(p)
    add_device_argument(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_eval)

    from ..experiments.demo import DEFAULTS

    p = add_verb(
        sub,
        "demo",
        help="Fashion-MNIST: plain vs IC from scratch vs WLD fine-tuning (a few minutes on CPU)",
        description="Trains the plain CNN, its IC version from scratch, and fine-tunes the converted plain model "
        "with WLD (plus a cross-entropy control), on the Debian package's Fashion-MNIST. Installs and downloads "
        "nothing.",
    )
    p.add_argument("--data", help="Fashion-MNIST IDX folder (default /usr/share/datasets/fashion-mnist)")
    add_out_argument(p, "output folder (default runs/demo)", default="runs/demo")
    p.add_argument(
        "--subset",
        type=nonnegative_int,
        default=DEFAULTS["subset"],
        help=f"training images used (default {DEFAULTS['subset']}; 0 = all 60,000)",
    )
    p.add_argument("--epochs", type=positive_int, default=DEFAULTS["epochs"], help="epochs of the scratch runs")
    p.add_argument("--wld-epochs", type=positive_int, default=DEFAULTS["wld_epochs"], help="epochs of WLD fine-tuning")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="first seed (default 0)")
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=DEFAULTS["seeds"],
        help=f"number of seeds, reported as mean ± std (default {DEFAULTS['seeds']})",
    )
    add_workers_argument(p)
    p.set_defaults(func=_cmd_demo)

    from ..experiments.study import NETS, PARTS, StudyConfig

    d = StudyConfig()
    p = add_verb(
        sub,
        "study",
        help="Fashion-MNIST ablations over seeds: IC from scratch and WLD (docs/fidelity.md)",
        description="Trains every cell of the from-scratch ablation (W' init, alpha, b1, network; plain with the "
        "same lr grid) and of the WLD ablation (branch lr, alpha start, e, tau; CE control) over seeds, chooses on "
        "a validation split held out of the training set, and reports mean ± std, paired differences and the "
        "test accuracy. Finished runs in OUT are reused, so an interrupted study resumes.",
    )
    p.add_argument("--data", help="Fashion-MNIST IDX folder (default /usr/share/datasets/fashion-mnist)")
    add_out_argument(p, "output folder (default runs/study)", default="runs/study")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(d.parts), help="parts to run (default both)")
    p.add_argument("--nets", nargs="+", choices=NETS, default=list(d.nets), help="networks of the scratch part")
    p.add_argument("--seeds", type=positive_int, default=len(d.seeds), help=f"seeds 0..N-1 (default {len(d.seeds)})")
    p.add_argument("--train-images", type=positive_int, default=d.train_images)
    p.add_argument("--val-images", type=positive_int, default=d.val_images)
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help="epochs from scratch")
    p.add_argument("--wld-epochs", type=positive_int, default=d.wld_epochs)
    p.add_argument("--lrs", type=float, nargs="+", default=list(d.lrs), help="learning-rate grid (plain and IC)")
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes, one torch thread each (default: min(2, CPUs))",
    )
    p.set_defaults(func=_cmd_study)


def _cmd_study(args) -> int:
    from ..experiments.demo import missing_dataset_message
    from ..experiments.study import StudyConfig, run_study

    cfg = StudyConfig(
        train_images=args.train_images,
        val_images=args.val_images,
        epochs=args.epochs,
        wld_epochs=args.wld_epochs,
        seeds=tuple(range(args.seeds)),
        nets=tuple(args.nets),
        lrs=tuple(args.lrs),
        parts=tuple(args.parts),
    )
    try:
        run_study(cfg, args.out, args.data, jobs=args.jobs)
    except FileNotFoundError as exc:
        raise FileNotFoundError(missing_dataset_message(exc)) from exc
    return 0


def _cmd_train(args) -> int:
    from ..training import watchdog
    from ..training.distributed import dist_info, shutdown_distributed
    from ..training.train_recipe import train

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        watchdog.arm()  # `kill -USR1 PID` (or a stuck-run watchdog) dumps this rank's Python stacks
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    recipe = get_recipe(args.recipe)
    changes = dict(
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        train_subset=args.subset,
        alpha=args.alpha,
        alpha_end=args.alpha_end,
        ten_crop=args.ten_crop,
        ic_lr_mult=args.ic_lr_mult,
    )
    if args.lr_step:
        changes.update(lr_schedule="step", lr_milestones=milestones_every(args.lr_step, args.epochs or recipe.epochs))
    recipe = recipe.replace(**changes)
    ok = False
    try:
        summary = train(
            recipe,
            data=args.data,
            out_dir=args.out,
            teacher_weights=args.teacher,
            resume=args.resume,
            overwrite=args.overwrite,
            amp=args.amp,
            workers=args.workers,
            seed=args.seed,
            device=args.device,
            ckpt_every=args.ckpt_every,
            max_steps=args.max_steps,
            log=lambda line: print(line, file=sys.stderr),
        )
        if dist_info()[0] == 0:
            print(json.dumps(summary, indent=1))
        ok = True
    finally:
        shutdown_distributed(ok)
    return 0


def _cmd_eval(args) -> int:
    from ..io import load, load_weights
    from ..training.data import build_datasets
    from ..training.evaluate import evaluate
    from ..training.model_factory import models_for_recipe
    from ..training.recipes import Recipe

    state = load(args.checkpoint, "checkpoint")
    if not isinstance(state, dict):
        raise ValueError(
            f"--checkpoint: {args.checkpoint!r} holds a {type(state).__name__}, not a state_dict or a run's checkpoint"
        )
    recipe = None
    if args.recipe:
        recipe = get_recipe(args.recipe)
    elif isinstance(state.get("recipe"), dict):
        recipe = Recipe.from_dict(state["recipe"])
    if recipe is None:
        raise ValueError("recipe: a bare state_dict needs --recipe (for the dataset) and --model")
    if args.model:
        recipe = recipe.replace(model=args.model)
    bundle = build_datasets(recipe.dataset, args.data, augment=False)
    model = models_for_recipe(recipe, bundle.num_classes, bundle.in_channels)[0]  # a WLD run's model: the student
    load_weights(model, state, what="checkpoint")
    device = resolve_device(args.device)
    model.to(device)
    common = dict(device=device, amp=args.amp, workers=args.workers)
    res = {"single_crop": evaluate(model, bundle.val, batch_size=args.batch_size, desc="single-crop", **common)}
    if args.ten_crop:
        res["ten_crop"] = evaluate(
            model, bundle.val_ten_crop, batch_size=max(1, args.batch_size // 10), desc="10-crop", **common
        )
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        for k, r in res.items():
            print(
                f"{k:12s} top-1 {r['top1']:.2f}% (error {100 - r['top1']:.2f}%)  top-5 {r['top5']:.2f}% "
                f"(error {100 - r['top5']:.2f}%)  on {r['n']} images"
            )
    return 0


def _cmd_demo(args) -> int:
    from ..experiments.demo import missing_dataset_message, run_demo

    try:
        run_demo(
            args.data,
            args.out,
            subset=args.subset or None,
            epochs=args.epochs,
            wld_epochs=args.wld_epochs,
            seed=args.seed,
            seeds=args.seeds,
            workers=args.workers,
        )
    except FileNotFoundError as exc:
        print(missing_dataset_message(exc), file=sys.stderr)
        return 1
    return 0
