r"""The IC neuron (paper eq. 3) on numpy arrays, computed by the Rust core (``ndarray``).

.. math::
    a(x) = w\cdot x + \mathrm{relu}(w\cdot x - w' \textstyle\sum_k x_k + b_1) + b_2, \qquad y = f(a(x))

``w`` is the weight vector (d,), ``w_prime`` (w') the scalar adjustment weight, ``b1`` the shift of
the collision hyperplane ``(w - w'·1)·x + b1 = 0`` and ``b2`` the ordinary bias. ``f`` is
``activation``: ``'relu'`` (default), ``'identity'`` or ``'sigmoid'``.

**Plain neuron.** ``w_prime=None, b1=None`` (both, never one) gives the McCulloch–Pitts neuron
``f(w·x + b2)``. (Theorem 2 of the paper: any plain neuron is also an IC neuron, e.g. with ``b1`` so
negative that the relu term is 0 on the bounded input domain.)

**Conventions.**

* ``x``, ``w`` and ``grad_output`` must be numpy arrays of dtype float32 or float64 (native byte
  order). Lists, ints, bools, complex, object and float16 arrays are refused with a ``TypeError``
  rather than converted, so no silent copy or cast happens: call ``np.asarray(v, dtype=np.float64)``
  yourself. float64 arrays are read in place by Rust, strided views included (zero copy); float32
  arrays are widened to float64 inside Rust. Results come back in ``x``'s dtype.
* ``x`` is (n, d) (n samples) or (d,) (one sample). ``forward`` then returns (n,) or a numpy scalar.
* Scalar parameters (``w_prime``, ``b1``, ``b2``) and the entries of ``w`` must be finite real
  numbers (``ValueError`` for NaN/inf). NaN in ``x`` is not checked; it propagates to the output.
* ReLU derivatives at exactly 0 are taken as 0 (both the inner and the outer ReLU).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from . import _core

__all__ = ["ACTIVATIONS", "forward", "grad", "regions", "region_map", "MAX_RESOLUTION"]

ACTIVATIONS = ("relu", "identity", "sigmoid")
MAX_RESOLUTION = 4096
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _array(name: str, a, ndims: tuple[int, ...]) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(
            f"{name}: expected a numpy array (float32 or float64), got {type(a).__name__}; "
            f"convert it with np.asarray({name}, dtype=np.float64)"
        )
    if a.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected dtype float32 or float64 (native byte order), got {a.dtype}")
    if a.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name}: expected a {want} array, got shape {a.shape}")
    return a


def _real(name: str, v, optional: bool = False) -> float | None:
    if v is None and optional:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v}")
    return v


def _params(w, w_prime, b1, b2, activation) -> tuple[np.ndarray, float | None, float | None, float, str]:
    w = _array("w", w, (1,))
    if w.size == 0:
        raise ValueError("w: expected at least one weight, got an empty array")
    if not np.all(np.isfinite(w)):
        raise ValueError("w: contains NaN or infinite values")
    if (w_prime is None) != (b1 is None):
        raise ValueError("w_prime and b1: give both (IC neuron) or neither (plain neuron)")
    w_prime = _real("w_prime", w_prime, optional=True)
    b1 = _real("b1", b1, optional=True)
    b2 = _real("b2", b2)
    if not isinstance(activation, str):
        raise TypeError(f"activation: expected a string, got {type(activation).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    return w, w_prime, b1, b2, activation


def _inputs(x, w: np.ndarray) -> tuple[np.ndarray, bool]:
    """Returns x as (n, d) (a view) and whether it was a single sample."""
    x = _array("x", x, (1, 2))
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"x: has {x.shape[-1]} features per sample but w has {w.shape[0]} weights")
    return (x[None, :], True) if x.ndim == 1 else (x, False)


def forward(
    x: np.ndarray, w: np.ndarray, w_prime: float | None, b1: float | None, b2: float, activation: str = "relu"
) -> np.ndarray | np.floating:
    """``y = f(a(x))`` for x (n, d) -> (n,), or x (d,) -> a numpy scalar; in x's dtype.

    >>> import numpy as np
    >>> x = np.array([[1.0, 3.0]]); w = np.array([1.0, 2.0])
    >>> forward(x, w, 0.5, 1.0, 0.5)       # 7 + relu(7 - 0.5*4 + 1) + 0.5
    array([13.5])
    >>> forward(x, w, None, None, 0.5)     # plain neuron: relu(7 + 0.5)
    array([7.5])
    """
    w, w_prime, b1, b2, activation = _params(w, w_prime, b1, b2, activation)
    x2, single = _inputs(x, w)
    y = _core.neuron_forward(x2, w, w_prime, b1, b2, activation)
    return y[0] if single else y


def grad(
    x: np.ndarray,
    w: np.ndarray,
    w_prime: float | None,
    b1: float | None,
    b2: float,
    activation: str = "relu",
    grad_output=None,
) -> dict[str, object]:
    """Gradients of ``sum_i grad_output_i * y_i`` (so, with ``grad_output = dL/dy``, those of a loss L).

    ``grad_output``: (n,) for x (n, d), or a real number / 0-d array for x (d,); ``None`` means all
    ones (the gradient of ``sum(y)``). Returns a dict:

    * ``'x'``: like x (in x's dtype), ``'w'``: (d,) in w's dtype;
    * ``'w_prime'``, ``'b1'``, ``'b2'``: Python floats; ``'w_prime'`` and ``'b1'`` are ``None`` for
      the plain neuron (it has no such parameters).

    To train on logits with your own loss, call it with ``activation='identity'`` and
    ``grad_output = dL/da``.
    """
    w, w_prime, b1, b2, activation = _params(w, w_prime, b1, b2, activation)
    x2, single = _inputs(x, w)
    n = x2.shape[0]
    if grad_output is None:
        g = np.ones(n, dtype=np.float64)
    elif single:
        if isinstance(grad_output, np.ndarray):
            grad_output = _array("grad_output", grad_output, (0,))[()]
        g = np.array([_real("grad_output", grad_output)])
    else:
        g = _array("grad_output", grad_output, (1,))
        if g.shape != (n,):
            raise ValueError(f"grad_output: expected shape ({n},) (one value per sample), got {g.shape}")
    out = _core.neuron_grad(x2, w, w_prime, b1, b2, activation, g)
    out["x"] = out["x"][0] if single else out["x"]
    out["w"] = out["w"].astype(w.dtype, copy=False)
    if w_prime is None:
        out["w_prime"] = out["b1"] = None
    return out


def _grid_args(w, w_prime, b1, b2, activation, bounds, resolution):
    w, w_prime, b1, b2, activation = _params(w, w_prime, b1, b2, activation)
    if w.shape != (2,):
        raise ValueError(f"w: regions are counted for 2-D inputs, so w needs 2 weights, got shape {w.shape}")
    if not isinstance(bounds, (tuple, list, np.ndarray)) or len(bounds) != 4:
        raise ValueError(f"bounds: expected 4 numbers (x_min, x_max, y_min, y_max), got {bounds!r}")
    bounds = [_real("bounds", v) for v in bounds]
    if not (bounds[0] < bounds[1] and bounds[2] < bounds[3]):
        raise ValueError(f"bounds: expected x_min < x_max and y_min < y_max, got {tuple(bounds)}")
    if isinstance(resolution, (bool, np.bool_)) or not isinstance(resolution, numbers.Integral):
        raise TypeError(f"resolution: expected an int, got {type(resolution).__name__}")
    if not 2 <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"resolution: expected 2 <= resolution <= {MAX_RESOLUTION}, got {resolution}")
    return w, w_prime, b1, b2, activation, bounds, int(resolution)


def region_map(
    w: np.ndarray,
    w_prime: float | None,
    b1: float | None,
    b2: float,
    bounds: Sequence[float] = (-1.0, 1.0, -1.0, 1.0),
    resolution: int = 256,
    activation: str = "relu",
) -> np.ndarray:
    """Labels (resolution, resolution) int64 of the linear pieces of a 2-D neuron on a grid.

    The grid has ``resolution`` evenly spaced points per axis over ``bounds = (x_min, x_max, y_min,
    y_max)``, ends included. ``labels[i, j]`` is the piece of the point ``(x_j, y_i)``: rows go
    with y (increasing), so ``plt.imshow(labels, origin='lower', extent=bounds)`` draws it the
    right way up. Two grid points share a label when they have the same ReLU activation pattern
    (inner collision ReLU, and the outer ReLU when ``activation='relu'``) and are 4-connected.
    Labels are 0, 1, ... in row-major order of first appearance. For ``'identity'``/``'sigmoid'``
    only the inner ReLU splits the plane (the pieces of the pre-activation).
    """
    w, w_prime, b1, b2, activation, bounds, resolution = _grid_args(w, w_prime, b1, b2, activation, bounds, resolution)
    return _core.neuron_regions(w, w_prime, b1, b2, activation, bounds, resolution)[1]


def regions(
    w: np.ndarray,
    w_prime: float | None,
    b1: float | None,
    b2: float,
    bounds: Sequence[float] = (-1.0, 1.0, -1.0, 1.0),
    resolution: int = 256,
    activation: str = "relu",
) -> int:
    """Number of linear pieces of a 2-D neuron on a grid over ``bounds`` (see :func:`region_map`).

    A plain ReLU neuron gives 2 when its line crosses the domain and 1 otherwise. An IC neuron
    adds the collision line ``(w - w'·1)·x + b1 = 0``, across which the outer line bends: up to 4.
    A piece thinner than the grid spacing can be missed; raise ``resolution`` to resolve it.
    """
    w, w_prime, b1, b2, activation, bounds, resolution = _grid_args(w, w_prime, b1, b2, activation, bounds, resolution)
    return int(_core.neuron_regions(w, w_prime, b1, b2, activation, bounds, resolution)[0])
