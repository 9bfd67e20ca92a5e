"""XOR with a single IC neuron, trained by plain gradient descent on the Rust gradient.

    python examples/xor.py [--plot xor.png]

Why the target is XNOR. The IC neuron's pre-activation ``a(x) = w·x + relu(w·x - w'·sum(x) + b1) + b2``
is convex (affine plus a ReLU of an affine map), so ``{a <= t}`` is convex and the neuron is *high*
outside a convex set. Of the two XOR classes, only {(0,0), (1,1)} can be that outside: the inner
and outer hyperplanes share ``w`` and a short calculation shows the other orientation has no
solution. So the neuron is trained, with a sigmoid and the logistic loss, to output
P(XOR = 0), and it *separates* XOR: ``XOR(x) = 1  <=>  y(x) < 0.5``. An exact solution is
``w = (-1, -1), w' = -3, b1 = -2, b2 = 0.5``: ``a = max(-s, s - 2) + 0.5`` with ``s = x1 + x2``.

A plain neuron ``f(w·x + b)`` is monotone in the linear score ``w·x + b``; XOR is not linearly
separable, so no threshold on it separates the four points, in either orientation. The script
trains it the same way, in both orientations, and shows it fails.

Exits 0 when the IC neuron separates the four points and the plain one does not. Deterministic.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from ic_networks import neuron

X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
XOR = np.array([0.0, 1.0, 1.0, 0.0])


def separates(y: np.ndarray, labels: np.ndarray, margin: float = 0.0) -> bool:
    """True when a threshold on ``y`` puts the two classes of ``labels`` apart, in either orientation,
    with a gap larger than ``margin``."""
    pos, neg = y[labels == 1], y[labels == 0]
    return bool(pos.min() - neg.max() > margin or neg.min() - pos.max() > margin)


def train(
    ic: bool = True, target: np.ndarray = 1.0 - XOR, steps: int = 3000, lr: float = 0.5, seed: int = 0
) -> dict[str, float | None]:
    """Fits ``sigmoid(a(x))`` to ``target`` on the four XOR points with the mean logistic loss and plain
    gradient descent; ``ic=False`` trains a plain neuron. Returns the parameters (``w`` an array)."""
    rng = np.random.default_rng(seed)
    p = {"w": rng.normal(0.0, 0.5, 2), "w_prime": None, "b1": None, "b2": 0.0}
    if ic:
        p.update(w_prime=float(rng.normal(0.0, 0.5)), b1=0.5)  # b1 > 0: the collision ReLU starts alive
    for _ in range(steps):
        logits = neuron.forward(X, p["w"], p["w_prime"], p["b1"], p["b2"], activation="identity")
        dloss = (1.0 / (1.0 + np.exp(-logits)) - target) / len(X)  # d(mean logistic loss)/d(logit)
        g = neuron.grad(X, p["w"], p["w_prime"], p["b1"], p["b2"], activation="identity", grad_output=dloss)
        p["w"] = p["w"] - lr * g["w"]
        p["b2"] -= lr * g["b2"]
        if ic:
            p["w_prime"] -= lr * g["w_prime"]
            p["b1"] -= lr * g["b1"]
    return p


def predict(p: dict[str, float | None]) -> np.ndarray:
    return neuron.forward(X, p["w"], p["w_prime"], p["b1"], p["b2"], activation="sigmoid")


def _show(name: str, p: dict[str, float | None]) -> None:
    y = predict(p)
    params = f"w = {np.array2string(p['w'], precision=3)}, b2 = {p['b2']:.3f}"
    if p["w_prime"] is not None:
        params += f", w' = {p['w_prime']:.3f}, b1 = {p['b1']:.3f}"
    print(f"{name}: {params}")
    for x, t, v in zip(X, XOR, y):
        print(f"  x = {x.astype(int)}  XOR = {int(t)}  y = P(XOR=0) = {v:.3f}")
    print(f"  separates XOR: {separates(y, XOR, margin=1e-3)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot", metavar="PNG", help="also draw the learnt decision regions (Figure 2b)")
    args = ap.parse_args(argv)

    ic = train(ic=True)
    _show("IC neuron", ic)
    plain = [train(ic=False, target=t) for t in (1.0 - XOR, XOR)]
    for p, name in zip(plain, ("plain neuron, target XNOR", "plain neuron, target XOR")):
        _show(name, p)
    if args.plot:
        from ic_networks.viz.figures import plot_xor

        plot_xor(args.plot, ic["w"], ic["w_prime"], ic["b1"], ic["b2"])
        print(f"wrote {args.plot}")
    ok = separates(predict(ic), XOR, 1e-3) and not any(separates(predict(p), XOR, 1e-3) for p in plain)
    print("OK: one IC neuron separates XOR, a plain neuron does not" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
