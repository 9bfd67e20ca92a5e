//! The IC neuron of paper eq. 3 on `ndarray` views (exposed to numpy in `lib.rs`).
//!
//! ```text
//! a(x) = w·x + relu(w·x - w' * sum(x) + b1) + b2,    y = f(a)
//! ```
//! `w` (d), scalars `w'`, `b1`, `b2`, inputs `x` (n, d). A plain (McCulloch–Pitts) neuron is the
//! same with the collision term switched off (`Params::plain`).
use crate::error::Result;
use crate::value_err;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use std::cmp::Ordering;

/// The outer activation `f`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Identity,
    Sigmoid,
}

impl Activation {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "relu" => Ok(Self::Relu),
            "identity" | "linear" | "none" => Ok(Self::Identity),
            "sigmoid" => Ok(Self::Sigmoid),
            other => Err(value_err!("activation: expected 'relu', 'identity' or 'sigmoid', got {other:?}")),
        }
    }
    fn apply(self, a: f64) -> f64 {
        match self {
            Self::Relu => a.max(0.0),
            Self::Identity => a,
            Self::Sigmoid => 1.0 / (1.0 + (-a).exp()),
        }
    }
    fn derivative(self, a: f64) -> f64 {
        match self {
            Self::Relu => (a > 0.0) as i32 as f64,
            Self::Identity => 1.0,
            Self::Sigmoid => {
                let s = 1.0 / (1.0 + (-a).exp());
                s * (1.0 - s)
            }
        }
    }
}

/// Scalar parameters of one neuron. `collision == false` is the plain neuron `f(w·x + b2)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub w_prime: f64,
    pub b1: f64,
    pub b2: f64,
    pub collision: bool,
    pub activation: Activation,
}

impl Params {
    pub fn ic(w_prime: f64, b1: f64, b2: f64, activation: Activation) -> Self {
        Self { w_prime, b1, b2, collision: true, activation }
    }
    pub fn plain(b2: f64, activation: Activation) -> Self {
        Self { w_prime: 0.0, b1: 0.0, b2, collision: false, activation }
    }
}

/// Per-sample intermediate values: `wx = w·x`, `z = w·x - w' sum(x) + b1`, `a` the pre-activation.
#[inline]
fn pre(x: ArrayView1<'_, f64>, w: ArrayView1<'_, f64>, p: &Params) -> (f64, f64, f64, f64) {
    let wx = x.dot(&w);
    let sx = x.sum();
    let z = wx - p.w_prime * sx + p.b1;
    let inner = if p.collision && z > 0.0 { z } else { 0.0 };
    (wx, sx, z, wx + inner + p.b2)
}

fn check(x: &ArrayView2<'_, f64>, w: &ArrayView1<'_, f64>) -> Result<()> {
    if x.ncols() != w.len() {
        return Err(value_err!("x: has {} features per sample but w has {} weights", x.ncols(), w.len()));
    }
    Ok(())
}

/// `y` (n) for `x` (n, d).
pub fn forward(x: ArrayView2<'_, f64>, w: ArrayView1<'_, f64>, p: &Params) -> Result<Array1<f64>> {
    check(&x, &w)?;
    Ok(x.axis_iter(Axis(0)).map(|row| p.activation.apply(pre(row, w, p).3)).collect())
}

/// Gradients of `sum_i g_i * y_i` for upstream `g` (n).
#[derive(Debug, Clone, PartialEq)]
pub struct Grads {
    pub x: Array2<f64>,
    pub w: Array1<f64>,
    pub w_prime: f64,
    pub b1: f64,
    pub b2: f64,
}

pub fn grad(x: ArrayView2<'_, f64>, w: ArrayView1<'_, f64>, p: &Params, g: ArrayView1<'_, f64>) -> Result<Grads> {
    check(&x, &w)?;
    if g.len() != x.nrows() {
        return Err(value_err!("grad_output: expected {} values (one per sample), got {}", x.nrows(), g.len()));
    }
    let d = w.len();
    let mut out = Grads { x: Array2::zeros((x.nrows(), d)), w: Array1::zeros(d), w_prime: 0.0, b1: 0.0, b2: 0.0 };
    for (i, row) in x.axis_iter(Axis(0)).enumerate() {
        let (_, sx, z, a) = pre(row, w, p);
        let ga = g[i] * p.activation.derivative(a);
        let m = if p.collision && z > 0.0 { 1.0 } else { 0.0 };
        // a = w·x (1 + m) - m w' sum(x) + m b1 + b2
        out.w.scaled_add(ga * (1.0 + m), &row);
        out.w_prime -= ga * m * sx;
        out.b1 += ga * m;
        out.b2 += ga;
        let mut gx = out.x.row_mut(i);
        gx.assign(&w);
        gx *= ga * (1.0 + m);
        gx -= ga * m * p.w_prime;
    }
    Ok(out)
}

/// Activation pattern of a 2-D input point: which of the two ReLUs are on.
fn pattern(x0: f64, x1: f64, w: ArrayView1<'_, f64>, p: &Params) -> u8 {
    let x = ndarray::arr1(&[x0, x1]);
    let (_, _, z, a) = pre(x.view(), w, p);
    let inner = (p.collision && z > 0.0) as u8;
    let outer = match p.activation {
        Activation::Relu => (a > 0.0) as u8,
        _ => 0,
    };
    inner | (outer << 1)
}

/// Labels the linear pieces of a 2-D neuron on a `resolution` x `resolution` grid over
/// `bounds = (x0_min, x0_max, x1_min, x1_max)`. A piece is the set of points with one activation
/// pattern (which of the two ReLUs are on). Every pattern's set is an intersection of half-planes,
/// hence convex and connected, so the pieces are exactly the distinct patterns that occur on the
/// grid; counting patterns (not grid-connected components) also keeps slivers thinner than the
/// grid spacing from splitting. Returns `(count, labels)`; labels[i, j] is the piece of the point
/// (x0_j, x1_i), numbered in order of first appearance, with x1 growing with i.
pub fn regions(
    w: ArrayView1<'_, f64>,
    p: &Params,
    bounds: [f64; 4],
    resolution: usize,
) -> Result<(usize, Array2<i64>)> {
    if w.len() != 2 {
        return Err(value_err!("w: regions are counted for 2-D inputs, so w needs 2 weights, got {}", w.len()));
    }
    if resolution < 2 {
        return Err(value_err!("resolution: expected at least 2 grid points per axis, got {resolution}"));
    }
    let [a0, a1, c0, c1] = bounds;
    if a1.partial_cmp(&a0) != Some(Ordering::Greater)
        || c1.partial_cmp(&c0) != Some(Ordering::Greater)
        || bounds.iter().any(|v| !v.is_finite())
    {
        return Err(value_err!("bounds: expected finite (x_min, x_max, y_min, y_max) with min < max, got {bounds:?}"));
    }
    let r = resolution;
    let step = |lo: f64, hi: f64, k: usize| lo + (hi - lo) * k as f64 / (r - 1) as f64;
    let mut ids = [-1i64; 4];
    let mut count = 0usize;
    let labels = Array2::from_shape_fn((r, r), |(i, j)| {
        let pat = pattern(step(a0, a1, j), step(c0, c1, i), w, p) as usize;
        if ids[pat] < 0 {
            ids[pat] = count as i64;
            count += 1;
        }
        ids[pat]
    });
    Ok((count, labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn forward_matches_hand_values() {
        // w·x = 1*1 + 2*3 = 7, sum = 4, z = 7 - 0.5*4 + 1 = 6, a = 7 + 6 + 0.5 = 13.5
        let x = array![[1.0, 3.0]];
        let w = array![1.0, 2.0];
        let y = forward(x.view(), w.view(), &Params::ic(0.5, 1.0, 0.5, Activation::Relu)).unwrap();
        assert_eq!(y[0], 13.5);
        let y = forward(x.view(), w.view(), &Params::plain(0.5, Activation::Relu)).unwrap();
        assert_eq!(y[0], 7.5);
    }

    #[test]
    fn regions_plain_line_splits_square_in_two() {
        let w = array![1.0, 1.0];
        let (n, _) = regions(w.view(), &Params::plain(0.0, Activation::Relu), [-1.0, 1.0, -1.0, 1.0], 64).unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn thin_sliver_is_one_region() {
        // a collision region thinner than the grid spacing must not split into pieces
        let w = array![1.0, -0.6];
        let (n, _) =
            regions(w.view(), &Params::ic(0.2, 0.0, 0.1, Activation::Relu), [-1.0, 1.0, -1.0, 1.0], 256).unwrap();
        assert_eq!(n, 4);
    }

    #[test]
    fn grad_matches_finite_differences() {
        let x = array![[0.3, -0.7], [1.2, 0.4]];
        let w = array![0.8, -0.3];
        let p = Params::ic(0.2, 0.1, 0.05, Activation::Sigmoid);
        let g = array![1.0, 1.0];
        let an = grad(x.view(), w.view(), &p, g.view()).unwrap();
        let f = |p: &Params, w: &Array1<f64>| forward(x.view(), w.view(), p).unwrap().sum();
        let h = 1e-6;
        let fd_b1 = (f(&Params { b1: p.b1 + h, ..p }, &w) - f(&Params { b1: p.b1 - h, ..p }, &w)) / (2.0 * h);
        assert!((fd_b1 - an.b1).abs() < 1e-6);
        let fd_wp = (f(&Params { w_prime: p.w_prime + h, ..p }, &w) - f(&Params { w_prime: p.w_prime - h, ..p }, &w))
            / (2.0 * h);
        assert!((fd_wp - an.w_prime).abs() < 1e-6);
    }
}
