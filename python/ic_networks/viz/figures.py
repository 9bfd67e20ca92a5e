"""The paper's Figure 2 as PNGs, drawn with matplotlib's Agg canvas (no pyplot, no display).

* :func:`plot_regions` (Figure 2a): the linear regions of a plain neuron and of an IC neuron on a 2-D
  grid, coloured by region label (:func:`ic_networks.neuron.region_map`), with the outer hyperplane
  ``a(x) = 0`` (solid) and the IC neuron's collision hyperplane ``(w - w'·1)·x + b1 = 0`` (dashed).
* :func:`plot_xor` (Figure 2b): one IC neuron on XOR: its decision regions and the four points.
* :func:`write_figures`: both, with the parameters below, into a folder (``ic-networks figures``).

Every PNG has a fixed pixel size (``REGIONS_SIZE``, ``XOR_SIZE``: width, height).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .. import neuron

__all__ = ["REGIONS_SIZE", "XOR_SIZE", "PLAIN", "IC", "XOR_SOLUTION", "plot_regions", "plot_xor", "write_figures"]

DPI = 100
REGIONS_SIZE = (1000, 500)
XOR_SIZE = (560, 520)

# Figure 2a: the same w and b2 for both neurons; the IC neuron's collision line crosses the square.
PLAIN: dict[str, float | None] = {"w": (1.0, -0.6), "w_prime": None, "b1": None, "b2": 0.1}
IC: dict[str, float | None] = {"w": (1.0, -0.6), "w_prime": 1.5, "b1": 0.0, "b2": 0.1}
# Figure 2b: an exact XOR solution, a = max(-s, s - 2) + 0.5 with s = x1 + x2 (see examples/xor.py).
XOR_SOLUTION: dict[str, float] = {"w": (-1.0, -1.0), "w_prime": -3.0, "b1": -2.0, "b2": 0.5}

_REGION_COLOURS = ListedColormap(["#a6cee3", "#fdbf6f", "#b2df8a", "#fb9a99", "#cab2d6", "#ffff99"])


def _grid(bounds: Sequence[float], resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = np.linspace(bounds[0], bounds[1], resolution)
    ys = np.linspace(bounds[2], bounds[3], resolution)
    gx, gy = np.meshgrid(xs, ys)  # gx[i, j] = xs[j], gy[i, j] = ys[i]: the layout of region_map
    return gx, gy, np.stack([gx.ravel(), gy.ravel()], axis=1)


def _lines(ax, p, gx, gy, pts) -> None:
    """Draws a(x) = 0 (solid black) and, for an IC neuron, the collision line z(x) = 0 (dashed red)."""
    w = np.asarray(p["w"], dtype=np.float64)
    a = neuron.forward(pts, w, p["w_prime"], p["b1"], p["b2"], activation="identity").reshape(gx.shape)
    ax.contour(gx, gy, a, levels=[0.0], colors="black", linewidths=2.2)
    if p["w_prime"] is not None:
        z = (pts @ (w - p["w_prime"]) + p["b1"]).reshape(gx.shape)
        ax.contour(gx, gy, z, levels=[0.0], colors="#d62728", linewidths=1.8, linestyles="--")


def _new_figure(size: tuple[int, int]) -> Figure:
    return Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")


def _save(fig: Figure, path: str) -> str:
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def plot_regions(
    path: str,
    plain: dict = PLAIN,
    ic: dict = IC,
    bounds: Sequence[float] = (-1.0, 1.0, -1.0, 1.0),
    resolution: int = 400,
) -> str:
    """Figure 2a: writes a ``REGIONS_SIZE`` PNG with the regions of ``plain`` (left) and ``ic`` (right),
    each a dict of ``w`` (2 numbers), ``w_prime``, ``b1``, ``b2`` (the plain one with ``None``s).
    Returns the path."""
    fig = _new_figure(REGIONS_SIZE)
    axes = fig.subplots(1, 2)
    gx, gy, pts = _grid(bounds, resolution)
    for ax, p, name in zip(axes, (plain, ic), ("plain neuron", "IC neuron")):
        w = np.asarray(p["w"], dtype=np.float64)
        labels = neuron.region_map(w, p["w_prime"], p["b1"], p["b2"], bounds, resolution)
        count = int(labels.max()) + 1
        ax.imshow(
            labels,
            origin="lower",
            extent=tuple(bounds),
            cmap=_REGION_COLOURS,
            vmin=0,
            vmax=_REGION_COLOURS.N - 1,
            interpolation="nearest",
            aspect="equal",
        )
        _lines(ax, p, gx, gy, pts)
        formula = "relu(w·x + b₂)" if p["w_prime"] is None else "relu(w·x + relu(w·x − w′Σx + b₁) + b₂)"
        values = f"w = ({w[0]:g}, {w[1]:g}), b₂ = {p['b2']:g}"
        if p["w_prime"] is not None:
            values += f", w′ = {p['w_prime']:g}, b₁ = {p['b1']:g}"
        ax.set_title(f"{name}: {count} linear region{'s' if count != 1 else ''}\n{formula}\n{values}", fontsize=11)
        ax.locator_params(nbins=5)
        ax.set_xlabel("x₁", fontsize=11)
        ax.set_ylabel("x₂", fontsize=11)
    handles = [
        Line2D([], [], color="black", lw=2.2, label="outer hyperplane  a(x) = 0"),
        Line2D([], [], color="#d62728", lw=1.8, ls="--", label="collision hyperplane  (w − w′·1)·x + b₁ = 0"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=11, frameon=False)
    return _save(fig, path)


def plot_xor(
    path: str,
    w: Sequence[float] = XOR_SOLUTION["w"],
    w_prime: float = XOR_SOLUTION["w_prime"],
    b1: float = XOR_SOLUTION["b1"],
    b2: float = XOR_SOLUTION["b2"],
    resolution: int = 300,
) -> str:
    """Figure 2b: writes a ``XOR_SIZE`` PNG of one IC neuron's decision regions on XOR. The neuron
    outputs y = sigmoid(a(x)) = P(XOR = 0) (see ``examples/xor.py`` for why); the shaded area is
    y < 0.5, i.e. predicted XOR = 1. Returns the path."""
    p = {"w": np.asarray(w, dtype=np.float64), "w_prime": float(w_prime), "b1": float(b1), "b2": float(b2)}
    bounds = (-0.5, 1.5, -0.5, 1.5)
    gx, gy, pts = _grid(bounds, resolution)
    a = neuron.forward(pts, p["w"], p["w_prime"], p["b1"], p["b2"], activation="identity").reshape(gx.shape)
    fig = _new_figure(XOR_SIZE)
    ax = fig.subplots()
    ax.contourf(gx, gy, (a < 0).astype(float), levels=[-0.5, 0.5, 1.5], colors=["#deebf7", "#fdd0a2"])
    _lines(ax, p, gx, gy, pts)
    pts4 = np.array([[0, 0], [1, 1], [0, 1], [1, 0]], dtype=float)
    ax.scatter(pts4[:2, 0], pts4[:2, 1], s=180, marker="o", c="#2171b5", edgecolors="black", zorder=3, label="XOR = 0")
    ax.scatter(pts4[2:, 0], pts4[2:, 1], s=220, marker="X", c="#e6550d", edgecolors="black", zorder=3, label="XOR = 1")
    ax.locator_params(nbins=5)
    ax.set_xlim(bounds[:2])
    ax.set_ylim(bounds[2:])
    ax.set_aspect("equal")
    ax.set_xlabel("x₁", fontsize=11)
    ax.set_ylabel("x₂", fontsize=11)
    ax.set_title(
        f"XOR by one IC neuron\nw = ({p['w'][0]:.2f}, {p['w'][1]:.2f}), w′ = {p['w_prime']:.2f}, "
        f"b₁ = {p['b1']:.2f}, b₂ = {p['b2']:.2f}",
        fontsize=11,
    )
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Patch(color="#fdd0a2", label="predicted XOR = 1 (a < 0)"),
        Line2D([], [], color="#d62728", lw=1.8, ls="--", label="collision hyperplane"),
    ]
    ax.legend(handles=handles, loc="upper right", fontsize=9, framealpha=0.92)
    return _save(fig, path)


def write_figures(out_dir: str, resolution: int = 400) -> dict[str, str]:
    """Writes ``fig2a_regions.png`` and ``fig2b_xor.png`` into ``out_dir`` (created if missing)."""
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir: expected a path, got {type(out_dir).__name__}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir: {out_dir!r} exists and is not a folder")
    return {
        "regions": plot_regions(os.path.join(out_dir, "fig2a_regions.png"), resolution=resolution),
        "xor": plot_xor(os.path.join(out_dir, "fig2b_xor.png")),
    }
