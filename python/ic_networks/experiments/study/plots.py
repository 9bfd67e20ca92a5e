"""The study's figure: test top-1 per cell and the validation curves of plain and the IC default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .summary import by_cell

__all__ = ["plot_study"]


def plot_study(summary: dict[str, Any], runs: list[dict], path) -> Path:
    """Left: test top-1 per scratch cell (mean ± std, one bar colour per network); right: mean
    validation curves of plain and the IC default at the first lr."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ...training.metrics import save_figure

    fig = Figure(figsize=(12, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax_bar, ax_curve = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    cells = summary.get("scratch", {}).get("cells", {})
    names = list(cells)
    if names:
        means = [cells[n]["test"]["mean"] for n in names]
        stds = [cells[n]["test"]["std"] for n in names]
        colours = ["tab:blue" if cells[n]["cell"]["net"] == "cnn" else "tab:orange" for n in names]
        ax_bar.barh(range(len(names)), means, xerr=stds, color=colours, alpha=0.8)
        ax_bar.set_yticks(range(len(names)), names, fontsize=7)
        ax_bar.invert_yaxis()
        lo = min(m - s for m, s in zip(means, stds))
        ax_bar.set_xlim(max(0.0, lo - 1.0), max(m + s for m, s in zip(means, stds)) + 0.5)
        ax_bar.set(xlabel="test top-1 (%), mean ± std over seeds", title="from scratch")
        by = by_cell(runs, "scratch")
        lr0 = cells[names[0]]["cell"]["lr"]
        for n in names:
            c = cells[n]["cell"]
            if c["factor"] or c["lr"] != lr0:
                continue
            curves = [r["curve"] for r in by[n]]
            epochs = [row["epoch"] for row in curves[0]]
            mean = [sum(cv[i]["val_top1"] for cv in curves) / len(curves) for i in range(len(epochs))]
            ax_curve.plot(epochs, mean, marker="o", label=n)
        ax_curve.set(xlabel="epoch", ylabel="validation top-1 (%), mean over seeds", title="plain vs IC default")
        ax_curve.grid(alpha=0.3)
        if ax_curve.lines:
            ax_curve.legend(fontsize=7)
    return save_figure(fig, path)
