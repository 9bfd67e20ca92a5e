"""ic_networks.neuron (the IC neuron of eq. 3 on numpy, in Rust) and examples/xor.py."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ic_networks import neuron

ROOT = Path(__file__).resolve().parents[1]


def reference(x, w, w_prime, b1, b2, activation="relu"):
    """eq. 3 in float64 numpy; x (n, d) or (d,)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    wx = x @ w
    a = wx + b2
    if w_prime is not None:
        a = a + np.maximum(wx - w_prime * x.sum(-1) + b1, 0.0)
    return {
        "relu": lambda v: np.maximum(v, 0.0),
        "identity": lambda v: v,
        "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
    }[activation](a)


def load_example():
    spec = importlib.util.spec_from_file_location("xor_example", ROOT / "examples" / "xor.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


PARAMS = [(0.7, -0.2, 0.3), (None, None, 0.3), (-1.3, 0.9, -0.4)]


# ------------------------------------------------------------------------------------------ forward
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", neuron.ACTIVATIONS)
@pytest.mark.parametrize("w_prime,b1,b2", PARAMS)
def test_forward_matches_numpy_reference(dtype, activation, w_prime, b1, b2):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(dtype)
    w = rng.normal(size=5).astype(dtype)
    y = neuron.forward(x, w, w_prime, b1, b2, activation)
    assert y.shape == (64,) and y.dtype == dtype
    want = reference(x, w, w_prime, b1, b2, activation).astype(dtype)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, want, rtol=tol, atol=tol)
    # a single sample (d,) gives a numpy scalar of x's dtype, the same value as its row
    y0 = neuron.forward(x[3], w, w_prime, b1, b2, activation)
    assert np.shape(y0) == () and y0.dtype == dtype and y0 == y[3]


def test_forward_hand_value_and_collision_term():
    x = np.array([[1.0, 3.0], [-1.0, -3.0]])
    w = np.array([1.0, 2.0])
    # row 0: w·x = 7, sum = 4, z = 7 - 0.5*4 + 1 = 6 -> a = 7 + 6 + 0.5; row 1: z = -7 + 2 + 1 < 0 -> a = -6.5
    np.testing.assert_array_equal(neuron.forward(x, w, 0.5, 1.0, 0.5, "identity"), [13.5, -6.5])
    np.testing.assert_array_equal(neuron.forward(x, w, 0.5, 1.0, 0.5), [13.5, 0.0])
    np.testing.assert_array_equal(neuron.forward(x, w, None, None, 0.5), [7.5, 0.0])


def test_strided_and_mixed_dtype_inputs():
    rng = np.random.default_rng(1)
    big = rng.normal(size=(40, 9))
    x = big[::-3, 1::2]  # non-contiguous, negative row stride: read in place by Rust
    w = rng.normal(size=4)
    assert not x.flags.c_contiguous
    np.testing.assert_array_equal(neuron.forward(x, w, 0.4, 0.1, -0.2), neuron.forward(x.copy(), w, 0.4, 0.1, -0.2))
    # float32 w with float64 x: output in x's dtype
    y = neuron.forward(x, w.astype(np.float32), 0.4, 0.1, -0.2)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, reference(x, w.astype(np.float32), 0.4, 0.1, -0.2), rtol=1e-12)
    assert neuron.forward(np.zeros((0, 4)), w, 0.4, 0.1, -0.2).shape == (0,)


def test_theorem_2_plain_neuron_as_ic_neuron():
    """With b1 below -(|w - w'|·1) * max|x|, the relu term is 0 on the box: the IC neuron is the plain one."""
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=(200, 3))
    w = rng.normal(size=3)
    w_prime = 0.3
    b1 = -np.abs(w - w_prime).sum() - 1e-3
    np.testing.assert_array_equal(neuron.forward(x, w, w_prime, b1, 0.2), neuron.forward(x, w, None, None, 0.2))


# ------------------------------------------------------------------------------------------ grad
@pytest.mark.parametrize("activation", neuron.ACTIVATIONS)
@pytest.mark.parametrize("w_prime,b1,b2", PARAMS)
def test_grad_matches_central_differences(activation, w_prime, b1, b2):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 3))
    w = rng.normal(size=3)
    g = rng.normal(size=12)
    # keep every sample away from the ReLU kinks, where finite differences are meaningless
    a = reference(x, w, w_prime, b1, b2, "identity")
    z = x @ w - (w_prime or 0.0) * x.sum(1) + (b1 or 0.0)
    keep = (np.abs(a) > 1e-3) & (np.abs(z) > 1e-3)
    x, g = x[keep], g[keep]
    assert len(x) >= 8
    an = neuron.grad(x, w, w_prime, b1, b2, activation, grad_output=g)
    h = 1e-6

    def loss(x=x, w=w, w_prime=w_prime, b1=b1, b2=b2):
        return float(g @ neuron.forward(x, w, w_prime, b1, b2, activation))

    def fd(name, value):
        if np.ndim(value) == 0:
            return (loss(**{name: value + h}) - loss(**{name: value - h})) / (2 * h)
        out = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            e = np.zeros_like(value)
            e[i] = h
            out[i] = (loss(**{name: value + e}) - loss(**{name: value - e})) / (2 * h)
        return out

    np.testing.assert_allclose(an["w"], fd("w", w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(an["x"], fd("x", x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(an["b2"], fd("b2", b2), rtol=1e-6, atol=1e-7)
    if w_prime is None:
        assert an["w_prime"] is None and an["b1"] is None
    else:
        np.testing.assert_allclose(an["w_prime"], fd("w_prime", w_prime), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(an["b1"], fd("b1", b1), rtol=1e-6, atol=1e-7)


def test_grad_shapes_defaults_and_dtypes():
    x = np.array([[1.0, 3.0], [0.5, -2.0]], dtype=np.float32)
    w = np.array([1.0, 2.0])
    g = neuron.grad(x, w, 0.5, 1.0, 0.5)  # grad_output defaults to ones: d sum(y)
    assert g["x"].shape == (2, 2) and g["x"].dtype == np.float32 and g["w"].dtype == np.float64
    one = [neuron.grad(x[i], w, 0.5, 1.0, 0.5, grad_output=2.0) for i in range(2)]
    assert one[0]["x"].shape == (2,)
    np.testing.assert_allclose(one[0]["w"] + one[1]["w"], 2 * g["w"], rtol=1e-6)
    np.testing.assert_allclose(one[0]["b2"] + one[1]["b2"], 2 * g["b2"], rtol=1e-6)
    # row 0: z = 6 > 0 and a > 0 -> da/dw = 2x, da/dw' = -sum(x), da/db1 = 1; row 1: z < 0, a < 0 -> all 0
    np.testing.assert_array_equal(g["w"], [2.0, 6.0])
    assert (g["w_prime"], g["b1"], g["b2"]) == (-4.0, 1.0, 1.0)
    assert isinstance(g["w_prime"], float)


# ------------------------------------------------------------------------------------------ regions
SQUARE = (-1.0, 1.0, -1.0, 1.0)


@pytest.mark.parametrize("resolution", [64, 101, 256])
def test_region_counts_of_known_cases(resolution):
    r = dict(bounds=SQUARE, resolution=resolution)
    # plain ReLU neuron whose line x + y = 0 crosses the square: 2 pieces; moved outside (b2 = 5): 1
    assert neuron.regions(np.array([1.0, 1.0]), None, None, 0.0, **r) == 2
    assert neuron.regions(np.array([1.0, 1.0]), None, None, 5.0, **r) == 1
    # no ReLU outside: a plain neuron is linear everywhere
    assert neuron.regions(np.array([1.0, 1.0]), None, None, 0.0, activation="identity", **r) == 1
    # IC, w = (1, 0), w' = 1, b1 = b2 = 0: z = -y, collision line y = 0. For y >= 0 (relu off)
    # a = x, split by x = 0; for y < 0, a = x - y, split by y = x. All four (inner, outer) patterns
    # occur and each is an intersection of half-planes: 4 pieces.
    assert neuron.regions(np.array([1.0, 0.0]), 1.0, 0.0, 0.0, **r) == 4
    # the same neuron without the outer ReLU: only the collision line splits: 2 pieces
    assert neuron.regions(np.array([1.0, 0.0]), 1.0, 0.0, 0.0, activation="sigmoid", **r) == 2
    # IC, w = (1, 1), w' = 2, b1 = 0, b2 = -1: a = max(s, 0) - 1 with s = x + y. The bent outer line
    # has pieces parallel to the collision line s = 0: s >= 1 (on), 0 <= s < 1 (off, relu off),
    # s < 0 (off, relu on): 3 pieces; the outer line only crosses one side of the collision line.
    assert neuron.regions(np.array([1.0, 1.0]), 2.0, 0.0, -1.0, **r) == 3
    # collision line outside the square (b1 = -5: relu never on): back to the plain neuron's 2
    assert neuron.regions(np.array([1.0, 1.0]), 0.5, -5.0, 0.0, **r) == 2


def test_region_map_layout():
    """labels[i, j] is the point (x_j, y_i): a vertical line x = 0.3 splits columns, not rows."""
    labels = neuron.region_map(np.array([1.0, 0.0]), None, None, -0.3, bounds=(-1.0, 1.0, 0.0, 3.0), resolution=11)
    assert labels.shape == (11, 11) and labels.dtype == np.int64
    xs = np.linspace(-1, 1, 11)
    assert (labels == labels[0]).all()  # every row the same
    assert len(set(labels[0, xs > 0.3])) == 1 and len(set(labels[0, xs < 0.3])) == 1
    assert labels[0, 0] != labels[0, -1]
    assert labels.max() + 1 == neuron.regions(
        np.array([1.0, 0.0]), None, None, -0.3, bounds=(-1.0, 1.0, 0.0, 3.0), resolution=11
    )


def test_region_count_thin_wedge():
    # 4-connected grid components would split this thin wedge into 12 pieces
    # w = (1, -0.6), w' = 0.2, b1 = 0, b2 = 0.1: collision line y = x, the outer line bends on it at a small
    # angle. Each activation pattern is an intersection of half-planes (convex): exactly 4 pieces.
    assert neuron.regions(np.array([1.0, -0.6]), 0.2, 0.0, 0.1, resolution=256) == 4


# ------------------------------------------------------------------------------------------ XOR
def test_xor_ic_neuron_separates_and_plain_neuron_cannot():
    ex = load_example()
    p = ex.train(ic=True)
    y = ex.predict(p)
    assert ex.separates(y, ex.XOR, margin=0.5)  # P(XOR=0) > 0.9 on (0,0), (1,1), < 0.1 on the others
    assert np.all((y < 0.5) == (ex.XOR == 1))
    for target in (1.0 - ex.XOR, ex.XOR):
        assert not ex.separates(ex.predict(ex.train(ic=False, target=target)), ex.XOR, margin=1e-3)


def test_xor_exact_solution_and_example_main(capsys):
    from ic_networks.viz.figures import XOR_SOLUTION as s

    ex = load_example()
    a = neuron.forward(ex.X, np.array(s["w"]), s["w_prime"], s["b1"], s["b2"], "identity")
    np.testing.assert_allclose(a, [0.5, -0.5, -0.5, 0.5])
    assert ex.main([]) == 0
    assert "OK: one IC neuron separates XOR" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ errors
W = np.array([1.0, 2.0])
X = np.ones((3, 2))


@pytest.mark.parametrize(
    "x,exc,match",
    [
        ([[1.0, 2.0]], TypeError, "x: expected a numpy array"),
        (np.ones((3, 2), dtype=np.int64), TypeError, "x: expected dtype float32 or float64"),
        (np.ones((3, 2), dtype=np.complex128), TypeError, "x: expected dtype"),
        (np.ones((3, 2), dtype=object), TypeError, "x: expected dtype"),
        (np.ones((3, 2), dtype=np.float16), TypeError, "x: expected dtype"),
        (np.ones((3, 2), dtype=">f8"), TypeError, "x: expected dtype"),
        (np.ones((3, 2, 1)), ValueError, "x: expected a 1-D or 2-D array"),
        (np.ones((3, 3)), ValueError, "x: has 3 features per sample but w has 2"),
    ],
)
def test_bad_x(x, exc, match):
    with pytest.raises(exc, match=match):
        neuron.forward(x, W, 0.5, 0.0, 0.0)
    with pytest.raises(exc, match=match):
        neuron.grad(x, W, 0.5, 0.0, 0.0)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(w=[1.0, 2.0]), TypeError, "w: expected a numpy array"),
        (dict(w=np.ones((1, 2))), ValueError, "w: expected a 1-D array"),
        (dict(w=np.array([1.0, np.nan])), ValueError, "w: contains NaN"),
        (dict(w=np.array([], dtype=np.float64)), ValueError, "w: expected at least one weight"),
        (dict(w_prime=float("nan")), ValueError, "w_prime: expected a finite number"),
        (dict(b1=float("inf")), ValueError, "b1: expected a finite number"),
        (dict(b2=float("nan")), ValueError, "b2: expected a finite number"),
        (dict(b2="1"), TypeError, "b2: expected a real number"),
        (dict(w_prime=True), TypeError, "w_prime: expected a real number"),
        (dict(w_prime=None), ValueError, "w_prime and b1: give both"),
        (dict(activation="tanh"), ValueError, "activation: expected one of"),
        (dict(activation=None), TypeError, "activation: expected a string"),
    ],
)
def test_bad_parameters(kwargs, exc, match):
    args = dict(x=X, w=W, w_prime=0.5, b1=0.0, b2=0.0, activation="relu")
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        neuron.forward(**args)


def test_bad_grad_output():
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(3,\)"):
        neuron.grad(X, W, 0.5, 0.0, 0.0, grad_output=np.ones(2))
    with pytest.raises(TypeError, match="grad_output: expected dtype"):
        neuron.grad(X, W, 0.5, 0.0, 0.0, grad_output=np.ones(3, dtype=np.int32))
    with pytest.raises(ValueError, match="grad_output: expected a 0-D array"):
        neuron.grad(X[0], W, 0.5, 0.0, 0.0, grad_output=np.ones(3))
    with pytest.raises(ValueError, match="grad_output: expected a finite number"):
        neuron.grad(X[0], W, 0.5, 0.0, 0.0, grad_output=float("nan"))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(w=np.ones(3)), ValueError, "w: regions are counted for 2-D inputs"),
        (dict(bounds=(0, 1, 0)), ValueError, "bounds: expected 4 numbers"),
        (dict(bounds=(1, 0, 0, 1)), ValueError, "bounds: expected x_min < x_max"),
        (dict(bounds=(0, 1, 0, float("nan"))), ValueError, "bounds: expected a finite number"),
        (dict(resolution=1), ValueError, "resolution: expected 2 <= resolution"),
        (dict(resolution=neuron.MAX_RESOLUTION + 1), ValueError, "resolution: expected 2 <= resolution"),
        (dict(resolution=64.0), TypeError, "resolution: expected an int"),
        (dict(resolution=True), TypeError, "resolution: expected an int"),
    ],
)
def test_bad_region_arguments(kwargs, exc, match):
    args = dict(w=W, w_prime=0.5, b1=0.0, b2=0.0)
    args.update(kwargs)
    for fn in (neuron.regions, neuron.region_map):
        with pytest.raises(exc, match=match):
            fn(**args)
