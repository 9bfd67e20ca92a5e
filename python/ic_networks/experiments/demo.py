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

The four runs are repeated for ``seeds`` seeds (initialisation and shuffling; the training images
are the same for every seed), and the demo reports each run's mean ± std over seeds and the paired
differences ``ic - plain``, ``wld - plain+ce`` and ``wld - plain`` with their 95 % interval
(:mod:`.stats`): a difference whose interval holds 0 is "within seed noise". It chooses nothing,
so it reports the test set; settings are chosen on a validation split by ``ic-networks study``.

It reads the Debian package's IDX files only, installs and downloads nothing, and by default trains
on a fixed random subset of the training set (``--subset``) so that three seeds finish in about
ten minutes on two CPU cores; the accuracies are measured on the full 10,000-image test set. It
prints the tables and writes ``results.json``, ``curves.png`` (curves averaged over seeds) and one
folder per seed and run (``seed<k>/<run>``) under ``--out``.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from .._checks import positive_int
from ..io import atomic_write_text
from ..models.cnn import fmnist_cnn, ic_fmnist_cnn
from ..training.data import FMNIST_APT, build_datasets
from ..training.evaluate import evaluate
from ..training.metrics import plot_curves
from ..training.model_factory import make_student
from ..training.recipes import get_recipe
from ..training.trainer import Trainer
from .stats import mean_std, paired_diff

__all__ = ["run_demo", "format_table", "format_comparisons", "DEFAULTS", "RUNS"]

DEFAULTS = {"subset": 10000, "epochs": 3, "wld_epochs": 1, "seed": 0, "seeds": 3}
RUNS = ("plain", "ic", "wld", "plain+ce")
#: (name, a, b): the paired differences b - a the demo reports
COMPARISONS = (
    ("IC from scratch vs plain", "plain", "ic"),
    ("WLD vs CE control", "plain+ce", "wld"),
    ("WLD vs its plain start", "plain", "wld"),
)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the demo's runs (mean ± std over seeds when a row has ``top1_std``)."""
    head = "| run | model | params | epochs | test top-1 | test top-5 | time |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        pm = (lambda k: f"{r[k]:.2f} ± {r[k + '_std']:.2f}%") if "top1_std" in r else (lambda k: f"{r[k]:.2f}%")
        lines.append(
            f"| {r['run']} | {r['model']} | {r['params']:,} | {r['epochs']} | {pm('top1')} | {pm('top5')} "
            f"| {r['time_s']:.0f} s |"
        )
    return "\n".join(lines)


def format_comparisons(comparisons: list[dict[str, Any]]) -> str:
    """A Markdown table of the paired differences (percentage points)."""
    lines = ["| comparison | difference (top-1) | 95 % interval | seeds better | verdict |", "|---|---:|---|---:|---|"]
    for c in comparisons:
        ci = "–" if c["low"] is None else f"[{c['low']:+.2f}, {c['high']:+.2f}]"
        lines.append(
            f"| {c['name']} | {c['mean']:+.2f} ± {c['std']:.2f} | {ci} | {c['wins']}/{c['n']} | {c['verdict']} |"
        )
    return "\n".join(lines)


def _mean_curves(per_seed: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """Epoch rows and step losses averaged over seeds (same number of steps for every seed)."""
    n = len(per_seed)
    epochs = [
        {
            "epoch": rows[0]["epoch"],
            "val_top1": sum(r["val_top1"] for r in rows) / n,
            "train_ce": sum(r["train_ce"] for r in rows) / n,
        }
        for rows in zip(*(c["epochs"] for c in per_seed))
    ]
    steps = [
        {"epoch": ss[0]["epoch"], "loss": sum(s["loss"] for s in ss) / n, "ce": sum(s["ce"] for s in ss) / n}
        for ss in zip(*(c["steps"] for c in per_seed))
    ]
    return {"epochs": epochs, "steps": steps, "offset": offset}


def run_demo(
    data=None,
    out_dir="runs/demo",
    *,
    subset: int | None = DEFAULTS["subset"],
    epochs: int = DEFAULTS["epochs"],
    wld_epochs: int = DEFAULTS["wld_epochs"],
    seed: int = DEFAULTS["seed"],
    seeds: int = DEFAULTS["seeds"],
    workers: int = 0,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs the demo (module docstring) for seeds ``seed .. seed + seeds - 1`` and returns
    ``{"runs": [...], "per_seed": [...], "comparisons": [...], "table": str, ...}``.
    Raises ``FileNotFoundError`` (naming the apt command) when the dataset is missing."""
    positive_int("seeds", seeds)
    t_start = time.perf_counter()
    out = Path(out_dir)
    bundle = build_datasets("fmnist", data, augment=False, train_subset=subset, seed=seed)
    n_train = len(bundle.train)
    n_all = len(bundle.train.dataset) if isinstance(bundle.train, Subset) else n_train
    log(
        f"Fashion-MNIST: training on {n_train:,} of the {n_all:,} training images"
        f"{' (a fixed random subset, to fit the time budget)' if subset else ''}; "
        f"testing on all {len(bundle.val):,} test images; {seeds} seed(s). torch threads: {torch.get_num_threads()}."
    )
    scratch = get_recipe("scratch-fmnist", epochs=epochs)
    wld = get_recipe("wld-fmnist", epochs=wld_epochs)
    descs = {
        "plain": "plain CNN, from scratch",
        "ic": "IC CNN (alpha=1), from scratch",
        "wld": "plain -> IC, WLD fine-tuned",
        "plain+ce": "plain, fine-tuned with CE (control)",
    }
    probe = torch.stack([bundle.val[i][0] for i in range(min(256, len(bundle.val)))])  # bit-identity check
    per_seed: list[dict[str, Any]] = []
    curves: dict[str, list[dict[str, Any]]] = {name: [] for name in RUNS}
    first: dict[str, dict[str, Any]] = {}

    for s in range(seed, seed + seeds):
        common = dict(workers=workers, seed=s, overwrite=True, progress=progress, log=log)
        rows: dict[str, dict[str, Any]] = {}

        def run(name: str, model, recipe, teacher=None) -> None:
            log(f"\n== seed {s}, {name}: {descs[name]}")
            trainer = Trainer(
                model, recipe, bundle.train, bundle.val, out / f"seed{s}" / name, teacher=teacher, **common
            )
            summary = trainer.fit()
            rows[name] = {
                "top1": summary["val_top1"],
                "top5": summary["val_top5"],
                "time_s": summary["time_s"],
                "alpha": trainer.metrics.epochs[-1].get("alpha"),
                "curve": [r["val_top1"] for r in trainer.metrics.epochs],
            }
            first.setdefault(
                name, {"run": name, "model": descs[name], "params": _params(model), "epochs": recipe.epochs}
            )
            curves[name].append(trainer.metrics.state())

        torch.manual_seed(s)
        plain = fmnist_cnn()
        run("plain", plain, scratch.replace(model="fmnist_cnn"))
        torch.manual_seed(s)
        run("ic", ic_fmnist_cnn(), scratch.replace(model="ic_fmnist_cnn"))

        teacher = plain.eval()
        torch.manual_seed(s)
        student = make_student(teacher, wld)
        with torch.no_grad():
            if not torch.equal(student.eval()(probe), teacher(probe)):
                raise RuntimeError("the converted model's logits differ from the plain model's at alpha=0")
        before = evaluate(student, bundle.val)
        log(
            "\nconverted plain -> IC at alpha=0: logits bit-identical to the plain model's; "
            f"test top-1 {before['top1']:.2f}%"
        )
        run("wld", student, wld, teacher=teacher)

        control = fmnist_cnn()
        control.load_state_dict(teacher.state_dict())
        run("plain+ce", control, wld.replace(mode="scratch", name="ce-fmnist"))
        per_seed.append({"seed": s, "converted_top1_at_alpha0": before["top1"], "runs": rows})

    table_rows = []
    for name in RUNS:
        t1 = mean_std([p["runs"][name]["top1"] for p in per_seed])
        t5 = mean_std([p["runs"][name]["top5"] for p in per_seed])
        tm = mean_std([p["runs"][name]["time_s"] for p in per_seed])
        table_rows.append(
            {
                **first[name],
                "top1": t1.mean,
                "top1_std": t1.std,
                "top5": t5.mean,
                "top5_std": t5.std,
                "time_s": tm.mean,
                "seeds": t1.n,
            }
        )
    comparisons = []
    for cname, a, b in COMPARISONS:
        d = paired_diff([p["runs"][a]["top1"] for p in per_seed], [p["runs"][b]["top1"] for p in per_seed])
        comparisons.append({"name": cname, "a": a, "b": b, **d.as_dict()})
    # epochs until the IC run reaches the plain run's final test accuracy (per seed; None: never)
    reach = [
        next((i + 1 for i, v in enumerate(p["runs"]["ic"]["curve"]) if v >= p["runs"]["plain"]["top1"]), None)
        for p in per_seed
    ]
    total = time.perf_counter() - t_start
    table, comp = format_table(table_rows), format_comparisons(comparisons)
    alpha_wld = mean_std([p["runs"]["wld"]["alpha"] for p in per_seed])
    result = {
        "runs": table_rows,
        "per_seed": per_seed,
        "comparisons": comparisons,
        "table": table,
        "comparison_table": comp,
        "ic_epochs_to_plain_final": reach,
        "wld_alpha_end": alpha_wld.mean,
        "seeds": list(range(seed, seed + seeds)),
        "train_images": n_train,
        "test_images": len(bundle.val),
        "converted_top1_at_alpha0": [p["converted_top1_at_alpha0"] for p in per_seed],
        "total_time_s": total,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "recipes": {"scratch": scratch.to_dict(), "wld": wld.to_dict()},
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(result, indent=1) + "\n", out / "results.json")
    mean_curves = {name: _mean_curves(curves[name], epochs if name in ("wld", "plain+ce") else 0) for name in RUNS}
    plot_curves(
        mean_curves,
        out / "curves.png",
        title=f"Fashion-MNIST, {n_train:,} training images, mean of {seeds} seed(s)",
        eval_set="test set",
    )
    reach_txt = ", ".join("never" if e is None else str(e) for e in reach)
    log(
        f"\nFashion-MNIST demo: {n_train:,} training images, all {len(bundle.val):,} test images, seeds "
        f"{seed}..{seed + seeds - 1}. WLD and the control continue from the plain run for {wld_epochs} more "
        f"epoch(s). Top-1 as mean ± std over seeds; time per run (training plus a test-set evaluation after "
        f"each epoch, {torch.get_num_threads()} torch thread(s)).\n\n{table}\n\nPaired differences (same seed), "
        f"percentage points; 'within seed noise' when the 95 % interval holds 0:\n\n{comp}\n\n"
        f"Epochs until IC reached plain's final accuracy, per seed: {reach_txt}. WLD's learnt alpha at the end: "
        f"{alpha_wld.mean:.4f} (mean over layers and seeds).\n\n"
        f"total {total:.0f} s. Wrote {out / 'results.json'}, {out / 'curves.png'} and the run folders."
    )
    return result


def missing_dataset_message(exc: Exception) -> str:
    return f"{exc}\n\nThe demo needs Fashion-MNIST from Debian. Install it with:\n    {FMNIST_APT}"
