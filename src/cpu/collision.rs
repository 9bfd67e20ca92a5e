//! The collision of the IC layer on dense CPU tensors: its forward and backward as fused
//! single-pass kernels (the elementwise work after the two convolutions).
//!
//! Forward, per element (c = channel):
//! ```text
//! r = relu(y - p + shift[c]);  out = y + alpha * r
//! ```
//! written in place into the two temporaries the conv calls produced (`y` becomes `out`, `p`
//! becomes `relu_z`), so the forward allocates nothing beyond the two convolutions.
//!
//! Backward, one pass over `grad` and `relu_z` gives `gz = alpha * grad * [r > 0]`, `gy = grad + gz`
//! and the reductions d alpha = sum(grad * r), db1[c] = sum gz, db2[c] = sum grad. Partial sums
//! are kept per fixed block of work and added in block order (f64 accumulators), so the result
//! does not depend on the number of threads.
//!
//! Tensors: CPU float32/float64, (N, C, Ho, Wo), all dense in one memory order (NCHW or
//! channels_last), as the backend choice in `ic_conv.rs` plans. NaN behaves as in `torch.relu` /
//! `threshold_backward`: relu(NaN) = NaN, and NaN is not masked.
use super::dense::{require, shape4, shared, view, Layout, Order};
use super::workspace::scratch;
use crate::aten::{parallel_for, SharedMut};
use crate::dispatch_float;
use crate::dtype::Elem;
use crate::error::{Error, Result};
use crate::types::{AdjustGrad, CollisionGrads, NeedsGrad};
use tch::{Kind, Tensor};

/// Elements per parallel task (NCHW tasks are whole channel planes; NHWC tasks whole pixels).
const GRAIN: usize = 1 << 15;

#[inline(always)]
pub(crate) fn relu<T: Elem>(v: T) -> T {
    // `v < 0 ? 0 : v` keeps NaN, like torch.relu.
    if v < T::ZERO {
        T::ZERO
    } else {
        v
    }
}

/// The collision of one element: `y += alpha * r` with `r = relu(y - p + s)`; returns `r`.
#[inline(always)]
pub(crate) fn collide<T: Elem>(y: &mut T, p: T, s: T, alpha: T) -> T {
    let r = relu(*y - p + s);
    *y += alpha * r;
    r
}

pub(crate) fn scalar(alpha: &Tensor) -> Result<f64> {
    Ok(alpha.f_reshape([-1])?.f_double_value(&[0])?)
}

/// The layout of `ts`, which must be dense in `order` with one shape and at least one element.
fn require_same(ts: &[&Tensor], kind: Kind, order: Order) -> Result<Layout> {
    let lay = require(ts, kind, order)?;
    let size = ts[0].size();
    if ts[0].numel() == 0 || ts[1..].iter().any(|t| t.size() != size) {
        return Err(Error::Runtime(format!(
            "internal: collision kernel on shapes {:?}",
            ts.iter().map(|t| t.size()).collect::<Vec<_>>()
        )));
    }
    Ok(lay)
}

/// (unit length, channel of a unit start, channels per unit): NCHW units are channel planes,
/// NHWC units are pixels holding all channels.
fn units(lay: Layout) -> (usize, usize) {
    match lay {
        Layout::Nchw { hw, .. } => (hw, 1),
        Layout::Nhwc { c } => (c, c),
    }
}

/// Fused forward on the conv temporaries `y` and `p` (N, C, Ho, Wo), which it overwrites; returns
/// `(out, relu_z)` sharing their storage. `shift`: (C).
pub fn forward(
    y: &Tensor,
    p: &Tensor,
    shift: &Tensor,
    alpha: &Tensor,
    kind: Kind,
    order: Order,
) -> Result<(Tensor, Tensor)> {
    let lay = require_same(&[y, p], kind, order)?;
    let a = scalar(alpha)?;
    let shift = shift.f_to_kind(kind)?.f_contiguous()?;
    dispatch_float!(kind, T => fwd::<T>(y, p, &shift, T::from_f64(a), lay))?;
    Ok((y.shallow_clone(), p.shallow_clone()))
}

fn fwd<T: Elem>(y: &Tensor, p: &Tensor, shift: &Tensor, alpha: T, lay: Layout) -> Result<()> {
    let (len, per) = units(lay);
    let c = shift.numel();
    // SAFETY: y and p are fresh conv outputs owned by the caller, dense with equal strides (checked);
    // each task writes only its own units.
    let (ys, ps, sh) = unsafe { (shared::<T>(y), shared::<T>(p), view::<T>(shift)) };
    let n_units = y.numel() / len;
    parallel_for(n_units, (GRAIN / len).max(1), |lo, hi| {
        for u in lo..hi {
            // SAFETY: unit ranges are disjoint.
            let (yu, pu) = unsafe { (ys.slice(u * len, len), ps.slice(u * len, len)) };
            let step = |yv: &mut T, pv: &mut T, s: T| *pv = collide(yv, *pv, s, alpha);
            if per == 1 {
                let s = sh[u % c];
                yu.iter_mut().zip(pu.iter_mut()).for_each(|(yv, pv)| step(yv, pv, s));
            } else {
                yu.iter_mut().zip(pu.iter_mut()).zip(sh).for_each(|((yv, pv), &s)| step(yv, pv, s));
            }
        }
    })
}

/// Fused backward of the collision term for `grad` and `relu_z` (N, C, Ho, Wo): `gy` (when x or
/// W need it), `gz` with alpha included, and the reductions `needs` asks for.
pub fn backward(
    grad: &Tensor,
    relu_z: &Tensor,
    alpha: &Tensor,
    needs: &NeedsGrad,
    kind: Kind,
    order: Order,
) -> Result<CollisionGrads> {
    let lay = require_same(&[grad, relu_z], kind, order)?;
    let a = scalar(alpha)?;
    let gz = scratch(shape4(relu_z)?, kind, order)?;
    let gy = scratch(shape4(relu_z)?, kind, order)?;
    let c = grad.size()[1] as usize;
    let sums = dispatch_float!(kind, T => bwd::<T>(grad, relu_z, &gy, &gz, T::from_f64(a), lay, c))?;
    let gy = if needs.main_path() { Some(gy) } else { None };
    sums.into_grads(kind, needs, gy, AdjustGrad::Gz(gz))
}

/// NHWC pixels per flush of the per-channel running sums.
const FLUSH: usize = 64;
/// Lanes of the NCHW running sums (independent accumulators, so the loop vectorises).
const LANES: usize = 8;
/// Elements per flush of the NCHW running sums into f64.
const CHUNK: usize = 256;

/// `alpha * g` where `r > 0`, else 0 (threshold_backward semantics: NaN in `r` passes).
#[inline(always)]
pub(crate) fn mask<T: Elem>(g: T, r: T, alpha: T) -> T {
    if r <= T::ZERO {
        T::ZERO
    } else {
        alpha * g
    }
}

crate::multiversion! {
    /// Backward of one NCHW channel plane: writes `gz`, `gy`; returns `[sum gz, sum g, sum g*r]`,
    /// summed in T over LANES x CHUNK blocks and in f64 across them (fixed order: deterministic).
    pub(crate) fn plane_bwd<T: Elem>(g: &[T], r: &[T], gy: &mut [T], gz: &mut [T], alpha: T) -> [f64; 3] {
        let mut tot = [0.0f64; 3];
        for (((gc, rc), gyc), gzc) in
            g.chunks(CHUNK).zip(r.chunks(CHUNK)).zip(gy.chunks_mut(CHUNK)).zip(gz.chunks_mut(CHUNK))
        {
            let mut acc = [[T::ZERO; LANES]; 3];
            let n = gc.len() / LANES * LANES;
            for (((gl, rl), gyl), gzl) in gc[..n]
                .chunks_exact(LANES)
                .zip(rc[..n].chunks_exact(LANES))
                .zip(gyc[..n].chunks_exact_mut(LANES))
                .zip(gzc[..n].chunks_exact_mut(LANES))
            {
                for l in 0..LANES {
                    let (gv, rv) = (gl[l], rl[l]);
                    let z = mask(gv, rv, alpha);
                    gzl[l] = z;
                    gyl[l] = gv + z;
                    acc[0][l] += z;
                    acc[1][l] += gv;
                    acc[2][l] += gv * rv;
                }
            }
            for i in n..gc.len() {
                let (gv, rv) = (gc[i], rc[i]);
                let z = mask(gv, rv, alpha);
                gzc[i] = z;
                gyc[i] = gv + z;
                acc[0][0] += z;
                acc[1][0] += gv;
                acc[2][0] += gv * rv;
            }
            for (t, a) in tot.iter_mut().zip(&acc) {
                *t += a.iter().map(|v| v.to_f64()).sum::<f64>();
            }
        }
        tot
    }
}

pub(crate) struct Sums {
    pub dalpha: f64,
    pub db1: Vec<f64>,
    pub db2: Vec<f64>,
}

impl Sums {
    /// The requested reductions as tensors of `kind`, with the kernel's other outputs.
    pub(crate) fn into_grads(
        self,
        kind: Kind,
        needs: &NeedsGrad,
        gy: Option<Tensor>,
        adjust: AdjustGrad,
    ) -> Result<CollisionGrads> {
        let vec_t = |v: &[f64]| -> Result<Tensor> { Ok(Tensor::from_slice(v).f_to_kind(kind)?) };
        Ok(CollisionGrads {
            gy,
            adjust,
            dalpha: if needs.alpha { Some(Tensor::from(self.dalpha).f_to_kind(kind)?) } else { None },
            db1: if needs.adjust_bias { Some(vec_t(&self.db1)?) } else { None },
            db2: if needs.bias { Some(vec_t(&self.db2)?) } else { None },
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn bwd<T: Elem>(
    grad: &Tensor,
    relu_z: &Tensor,
    gy: &Tensor,
    gz: &Tensor,
    alpha: T,
    lay: Layout,
    c: usize,
) -> Result<Sums> {
    let (len, per) = units(lay);
    // Work blocks of whole units; each block owns one slot of partial sums (per-channel vectors
    // for NHWC, one (db1, db2, dalpha) triple per plane for NCHW).
    let units_per_block = (GRAIN / len).max(1);
    let n_units = grad.numel() / len;
    let n_blocks = n_units.div_ceil(units_per_block);
    // NCHW: one slot per unit (plane); NHWC: one `c`-vector per block.
    let slots = if per == 1 { n_units } else { n_blocks * c };
    let mut part_b1 = vec![0.0f64; slots];
    let mut part_b2 = vec![0.0f64; slots];
    let mut part_a = vec![0.0f64; n_blocks];
    // SAFETY: grad/relu_z are dense with equal strides and only read; gy/gz are scratch buffers of
    // the same shape and order that nothing else holds; every block writes its own unit ranges and
    // its own partial-sum slots.
    let (gs, rs) = unsafe { (view::<T>(grad), view::<T>(relu_z)) };
    let (gys, gzs) = unsafe { (shared::<T>(gy), shared::<T>(gz)) };
    let (pb1, pb2, pa) =
        (SharedMut(part_b1.as_mut_ptr()), SharedMut(part_b2.as_mut_ptr()), SharedMut(part_a.as_mut_ptr()));
    parallel_for(n_blocks, 1, |lo, hi| {
        let mut acc = if per == 1 { Vec::new() } else { vec![T::ZERO; 3 * c] };
        for blk in lo..hi {
            let (u0, u1) = (blk * units_per_block, ((blk + 1) * units_per_block).min(n_units));
            let (off, n) = (u0 * len, (u1 - u0) * len);
            let (g, r) = (&gs[off..off + n], &rs[off..off + n]);
            // SAFETY: disjoint unit ranges and slots per block.
            let (gyb, gzb) = unsafe { (gys.slice(off, n), gzs.slice(off, n)) };
            let sa = if per == 1 {
                let mut sa = 0.0;
                for (i, u) in (u0..u1).enumerate() {
                    let sl = i * len..(i + 1) * len;
                    let [b1, b2, a] =
                        plane_bwd(&g[sl.clone()], &r[sl.clone()], &mut gyb[sl.clone()], &mut gzb[sl], alpha);
                    unsafe {
                        pb1.slice(u, 1)[0] = b1;
                        pb2.slice(u, 1)[0] = b2;
                    }
                    sa += a;
                }
                sa
            } else {
                let (b1, b2) = unsafe { (pb1.slice(blk * c, c), pb2.slice(blk * c, c)) };
                pixels_bwd(g, r, gyb, gzb, alpha, &mut acc, b1, b2)
            };
            unsafe { pa.slice(blk, 1)[0] = sa };
        }
    })?;
    Ok(reduce_sums(&part_a, &part_b1, &part_b2, c))
}

/// Adds the partial sums in slot order (deterministic). Slot `i` holds channel `i % c`: one slot
/// per NCHW plane (n, c), or one c-vector per block of NHWC pixels.
pub(crate) fn reduce_sums(part_a: &[f64], part_b1: &[f64], part_b2: &[f64], c: usize) -> Sums {
    let mut out = Sums { dalpha: part_a.iter().sum(), db1: vec![0.0; c], db2: vec![0.0; c] };
    for (i, (b1, b2)) in part_b1.iter().zip(part_b2).enumerate() {
        out.db1[i % c] += b1;
        out.db2[i % c] += b2;
    }
    out
}

crate::multiversion! {
    /// Backward of a run of whole NHWC pixels (`c` channels each): writes `gz`, `gy`; adds the
    /// per-channel sums of gz and g into `b1`, `b2` and returns sum g*r. Running sums in T per
    /// channel (`acc`: 3c scratch), vectorised across channels, flushed to f64 every FLUSH pixels.
    pub(crate) fn pixels_bwd<T: Elem>(
        g: &[T],
        r: &[T],
        gy: &mut [T],
        gz: &mut [T],
        alpha: T,
        acc: &mut [T],
        b1: &mut [f64],
        b2: &mut [f64],
    ) -> f64 {
        let c = b1.len();
        let mut sa = 0.0;
        acc.fill(T::ZERO);
        let px = g.len() / c;
        for p in 0..px {
            let sl = p * c..(p + 1) * c;
            let (gp, rp, gyp, gzp) = (&g[sl.clone()], &r[sl.clone()], &mut gy[sl.clone()], &mut gz[sl]);
            let (a1, rest) = acc.split_at_mut(c);
            let (a2, aa) = rest.split_at_mut(c);
            for i in 0..c {
                let (gv, rv) = (gp[i], rp[i]);
                let z = mask(gv, rv, alpha);
                gzp[i] = z;
                gyp[i] = gv + z;
                a1[i] += z;
                a2[i] += gv;
                aa[i] += gv * rv;
            }
            if (p + 1) % FLUSH == 0 || p + 1 == px {
                for ch in 0..c {
                    b1[ch] += a1[ch].to_f64();
                    b2[ch] += a2[ch].to_f64();
                    sa += aa[ch].to_f64();
                }
                acc.fill(T::ZERO);
            }
        }
        sa
    }
}
