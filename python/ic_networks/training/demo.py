"""``ic-networks demo``: the paper's two uses of the IC layer, in miniature, on Fashion-MNIST.

Three runs of the small CNN of :mod:`ic_networks.models.cnn`, on the same training images:

1. ``plain``: the plain CNN from scratch (recipe ``scratch-fmnist``, model ``fmnist_cnn``);
2. ``ic``: its IC version from scratch, alpha = 1 (recipe ``scratch-fmnist``, ``ic_fmnist_cnn``);
3. ``wld``: run 1's model converted to IC (alpha = 0, learnt; it starts with exactly the plain
   model's accuracy, which the demo checks) and fine-tuned with weak logit distillation from
   run 1's model as the teacher (recipe ``wld-fmnist``);
4. ``plain+ce``: the control for run 3, run 1's plain model fine-tuned for the same number of
   steps with the same learning-rate schedule and plain cross-entropy, so that the WLD gain is
   not just "more epochs".

It reads the Debian package's IDX files only, installs and downloads nothing, and by default trains
on a fixed random subset of the training set (``--subset``) so that it finishes in a few minutes
on two CPU cores; the accuracies are measured on the full 10,000-image test set. It prints a
table (accuracy and time per run) and writes ``results.json``, ``curves.png`` and one run folder
per run under ``--out``.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch.utils.data import Subset

from ..models.cnn import fmnist_cnn, ic_fmnist_cnn
from ..io import atomic_write_text
from .data import FMNIST_APT, build_datasets
from .evaluate import evaluate
from .model_factory import make_student
from .trainer import Trainer
from .metrics import plot_curves
from .recipes import get_recipe

__all__ = ["run_demo", "format_table", "DEFAULTS"]

DEFAULTS = {"subset": 20000, "epochs": 4, "wld_epochs": 2, "seed": 0}


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def format_table(rows: List[Dict[str, Any]]) -> str:
    """A Markdown table of the demo's runs."""
    head = "| run | model | params | epochs | test top-1 | test top-5 | time |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['model']} | {r['params']:,} | {r['epochs']} | {r['top1']:.2f}% | {r['top5']:.2f}% "
            f"| {r['time_s']:.0f} s |"
        )
    return "\n".join(lines)


def run_demo(
    data=None,
    out_dir="runs/demo",
    *,
    subset: Optional[int] = DEFAULTS["subset"],
    epochs: int = DEFAULTS["epochs"],
    wld_epochs: int = DEFAULTS["wld_epochs"],
    seed: int = DEFAULTS["seed"],
    workers: int = 0,
    progress: Optional[bool] = None,
    log: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Runs the demo (module docstring) and returns ``{"runs": [...], "table": str, ...}``.
    Raises ``FileNotFoundError`` (naming the apt command) when the dataset is missing."""
    t_start = time.perf_counter()
    out = Path(out_dir)
    bundle = build_datasets("fmnist", data, augment=False, train_subset=subset, seed=seed)
    n_train = len(bundle.train)
    n_all = len(bundle.train.dataset) if isinstance(bundle.train, Subset) else n_train
    log(
        f"Fashion-MNIST: training on {n_train:,} of the {n_all:,} training images"
        f"{' (a fixed random subset, to fit the time budget)' if subset else ''}; "
        f"testing on all {len(bundle.val):,} test images. torch threads: {torch.get_num_threads()}."
    )
    scratch = get_recipe("scratch-fmnist", epochs=epochs)
    wld = get_recipe("wld-fmnist", epochs=wld_epochs)
    common = dict(workers=workers, seed=seed, overwrite=True, progress=progress, log=log)
    rows: List[Dict[str, Any]] = []
    curves: Dict[str, Dict[str, list]] = {}

    def run(name: str, desc: str, model, recipe, teacher=None, offset: int = 0) -> Trainer:
        log(f"\n== {name}: {desc}")
        trainer = Trainer(model, recipe, bundle.train, bundle.val, out / name, teacher=teacher, **common)
        summary = trainer.fit()
        rows.append({
            "run": name, "model": desc, "params": _params(model), "epochs": recipe.epochs,
            "top1": summary["val_top1"], "top5": summary["val_top5"], "time_s": summary["time_s"],
        })
        curves[name] = {**trainer.metrics.state(), "offset": offset}
        return trainer

    torch.manual_seed(seed)
    plain = fmnist_cnn()
    run("plain", "plain CNN, from scratch", plain, scratch.replace(model="fmnist_cnn"))
    torch.manual_seed(seed)
    run("ic", "IC CNN (alpha=1), from scratch", ic_fmnist_cnn(), scratch.replace(model="ic_fmnist_cnn"))

    teacher = plain.eval()
    torch.manual_seed(seed)
    student = make_student(teacher, wld)
    probe = torch.stack([bundle.val[i][0] for i in range(256)])
    with torch.no_grad():
        if not torch.equal(student.eval()(probe), teacher(probe)):
            raise RuntimeError("the converted model's logits differ from the plain model's at alpha=0")
    before = evaluate(student, bundle.val)
    log(f"\nconverted plain -> IC at alpha=0: logits bit-identical to the plain model's; test top-1 {before['top1']:.2f}%")
    run("wld", "plain -> IC, WLD fine-tuned", student, wld, teacher=teacher, offset=epochs)

    control = fmnist_cnn()
    control.load_state_dict(teacher.state_dict())
    run("plain+ce", "plain, fine-tuned with CE (control)", control, wld.replace(mode="scratch", name="ce-fmnist"), offset=epochs)

    total = time.perf_counter() - t_start
    table = format_table(rows)
    wld_row = rows[2]
    result = {
        "runs": rows,
        "table": table,
        "train_images": n_train,
        "test_images": len(bundle.val),
        "converted_top1_at_alpha0": before["top1"],
        "wld_gain_top1": wld_row["top1"] - rows[0]["top1"],
        "total_time_s": total,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "recipes": {"scratch": scratch.to_dict(), "wld": wld.to_dict()},
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(result, indent=1) + "\n", out / "results.json")
    plot_curves(curves, out / "curves.png", title=f"Fashion-MNIST, {n_train:,} training images")
    log(
        f"\nFashion-MNIST demo: {n_train:,} training images, all {len(bundle.val):,} test images. WLD and the "
        f"control continue from the plain run for {wld_epochs} more epoch(s). Time: training plus a test-set "
        f"evaluation after each epoch, {torch.get_num_threads()} torch thread(s).\n\n{table}\n\n"
        f"total {total:.0f} s. Wrote {out / 'results.json'}, {out / 'curves.png'} and the run folders."
    )
    return result


def missing_dataset_message(exc: Exception) -> str:
    return f"{exc}\n\nThe demo needs Fashion-MNIST from Debian. Install it with:\n    {FMNIST_APT}"
