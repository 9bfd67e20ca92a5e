"""Run metrics: per-epoch rows and per-step training loss, written as CSV, JSON and a PNG of curves.

Files (all written atomically) in the run folder:

* ``metrics.csv``: one row per epoch (``epoch, step, lr, train_loss, train_ce, train_acc, val_loss,
  val_top1, val_top5, lam, alpha, time_s``; accuracies in percent, ``lam``/``alpha`` empty where
  they do not apply);
* ``metrics.json``: ``{"epochs": [...rows], "steps": [...], "summary": {...}}``, where a step
  entry is ``{"step", "epoch" (fractional), "loss", "ce"}`` every ``log_every`` steps;
* ``curves.png``: training cross-entropy against epochs (every ``log_every`` steps, and each
  epoch's mean as a marker, so a run shorter than ``log_every`` steps still has a curve), and
  validation top-1 against epochs.

Plots use matplotlib's object API with the Agg canvas, never ``pyplot``, so no display is needed and
no global backend is switched.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..io import atomic_write, atomic_write_text

__all__ = ["MetricsLog", "plot_curves", "save_figure"]


def _clean(v: Any) -> Any:
    """JSON-safe copy: non-finite floats become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Mapping):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class MetricsLog:
    def __init__(self, out_dir, epochs: list[dict] | None = None, steps: list[dict] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.epochs: list[dict] = list(epochs or [])
        self.steps: list[dict] = list(steps or [])

    def state(self) -> dict[str, list[dict]]:
        return {"epochs": list(self.epochs), "steps": list(self.steps)}

    def write(self, summary: Mapping[str, Any] | None = None, title: str = "") -> None:
        keys: list[str] = []
        for row in self.epochs:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, restval="")
        w.writeheader()
        for row in self.epochs:
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
        atomic_write_text(buf.getvalue(), self.out_dir / "metrics.csv")
        doc = {"epochs": self.epochs, "steps": self.steps, "summary": dict(summary or {})}
        atomic_write_text(json.dumps(_clean(doc), indent=1, allow_nan=False) + "\n", self.out_dir / "metrics.json")
        plot_curves({title or "run": self.state()}, self.out_dir / "curves.png")


def plot_curves(
    runs: Mapping[str, Mapping[str, list[dict]]], path, title: str = "", eval_set: str = "validation"
) -> Path:
    """One PNG with two panels for any number of runs: ``{label: {"epochs": rows, "steps": steps}}``,
    plus an optional ``"offset"`` (epochs) for a run that continues another one. The loss panel
    plots the step entries and each epoch row's ``train_ce`` (its mean over the epoch, a marker at
    the epoch's end); the accuracy panel the rows' ``val_top1``, measured on ``eval_set``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for label, run in runs.items():
        off = run.get("offset", 0)
        steps = run.get("steps") or []
        colour = None
        if steps:
            (line,) = ax_loss.plot(
                [off + s["epoch"] for s in steps], [s.get("ce", s["loss"]) for s in steps], label=label, lw=1
            )
            colour = line.get_color()
        means = [r for r in run.get("epochs") or [] if r.get("train_ce") is not None]
        if means:
            ax_loss.plot(
                [off + r["epoch"] for r in means],
                [r["train_ce"] for r in means],
                marker="s",
                ls="none",
                color=colour,
                label=None if steps else label,
            )
        rows = [r for r in run.get("epochs") or [] if r.get("val_top1") is not None]
        if rows:
            ax_acc.plot([off + r["epoch"] for r in rows], [r["val_top1"] for r in rows], marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="training cross-entropy", title="training loss (squares: epoch means)")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title=f"{eval_set} accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if any(not ln.get_label().startswith("_") for ln in ax.lines):
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def save_figure(fig, path) -> Path:
    """``fig`` (a matplotlib Figure with a canvas) laid out and written to ``path`` as PNG, atomically."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write(path, lambda f: f.write(buf.getvalue()))
