//! The collision kernels of `collision.rs` with the box sum folded in, for stride 1 on CPU.
//!
//! At stride 1 the box sum and the 1x1 conv commute, `P = conv1x1(boxsum(x), W') = boxsum(Q)` with
//! `Q = conv1x1(x, W')` (N, Cout, H, W) on x's grid. So:
//!
//! * forward: from `Q` and `y` (N, Cout, Ho, Wo), each output row of `P` is built in L1 by the box
//!   sum and consumed at once: `y` becomes `out = y + alpha * relu(y - P + shift)` in place and
//!   `relu_z` is written only when the backward needs it (not under `no_grad`). `S` and `P` never
//!   exist as tensors;
//! * backward: per channel plane (NCHW) or image (NHWC), `gz`, `gy` and the sums are computed as in
//!   `collision.rs` into a block-local buffer, and the transposed box sum of that buffer is written
//!   straight to `G = boxsum^T(gz)` (N, Cout, H, W), the input of the 1x1's GEMMs; `gz` never
//!   exists as a tensor.
//!
//! Same numerics and determinism as `collision.rs` (partial sums per block, added in block order).
use super::boxsum::{backward_block, for_each_output_row, row_buf_len, Blocks};
use super::collision::{collide, pixels_bwd, plane_bwd, reduce_sums, scalar, Sums};
use super::dense::{require, shape4, shared, view, Order};
use super::plane_box::PlaneBox;
use super::workspace::scratch;
use crate::aten::{parallel_for, SharedMut};
use crate::dispatch_float;
use crate::dtype::Elem;
use crate::error::{Error, Result};
use crate::geometry::ConvGeometry;
use crate::types::{AdjustGrad, CollisionGrads, NeedsGrad};
use tch::{Kind, Tensor};

/// Blocks of `q` (the box-sum input, on x's grid), after checking that `q` and `y` are dense in
/// `order` and `y` is the stride-1 box sum's output grid.
fn plan(q: &Tensor, y: &Tensor, kh: i64, kw: i64, g: &ConvGeometry, kind: Kind, order: Order) -> Result<Blocks> {
    require(&[q, y], kind, order)?;
    let (qs, ys) = (q.size(), y.size());
    let b = Blocks::new(&qs, order, kh, kw, g);
    let same = qs[0] == ys[0] && qs[1] == ys[1] && b.h.n_out as i64 == ys[2] && b.w.n_out as i64 == ys[3];
    if !g.unit_stride() || !same || y.numel() == 0 {
        return Err(Error::Runtime(format!(
            "internal: fused box-sum collision on {qs:?} -> {ys:?} with stride {:?}",
            g.stride
        )));
    }
    Ok(b)
}

/// Where the forward finds `q`'s planes: laid out like `y` (N, C, H, W, in the plan's order), or
/// channel-major, a contiguous (C, N, H, W): what one GEMM over all images gives on NCHW, faster
/// than a batched GEMM per image when the images are small ([`channel_major_fits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QLayout {
    LikeY,
    ChannelMajor,
}

/// Whether a forward on NCHW input of `shape` (N, C, H, W) with a `k` box and `g`'s geometry can
/// take a channel-major `q`: stride 1 with the output grid the input grid (the plane kernels of
/// `plane_box.rs`), and images of at most 128 values per plane, where the per-image GEMMs are
/// too narrow to run at the conv's rate (512@7, N=8: 86 GMAC/s in one GEMM against 63 per image;
/// at 14x14 both run at the same rate).
pub fn channel_major_fits(shape: [i64; 4], k: [i64; 2], g: &ConvGeometry) -> bool {
    shape[2] * shape[3] <= 128 && PlaneBox::applies(&Blocks::new(&shape, Order::Nchw, k[0], k[1], g))
}

/// Forward from `q` = conv1x1(x, W') (N, Cout, H, W, or channel-major: `q_layout`) and `y` =
/// conv(x, W) + b2 (N, Cout, Ho, Wo), which becomes `out` in place, for a box of `k` = (kh, kw)
/// with `g`'s geometry, on tensors of `kind` in `order`. Returns `(out, relu_z)`, `relu_z` only
/// if `keep_relu_z`.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    y: &Tensor,
    (q, q_layout): (&Tensor, QLayout),
    shift: &Tensor,
    alpha: &Tensor,
    k: [i64; 2],
    g: &ConvGeometry,
    (kind, order): (Kind, Order),
    keep_relu_z: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let b = match q_layout {
        QLayout::LikeY => plan(q, y, k[0], k[1], g, kind, order)?,
        QLayout::ChannelMajor => {
            let ys = shape4(y)?;
            require(&[y], kind, order)?;
            require(&[q], kind, Order::Nchw)?;
            if order != Order::Nchw || q.size() != [ys[1], ys[0], ys[2], ys[3]] || !channel_major_fits(ys, k, g) {
                return Err(Error::Runtime(format!(
                    "internal: channel-major q {:?} for y {ys:?} in {order:?}",
                    q.size()
                )));
            }
            Blocks::new(&ys, order, k[0], k[1], g)
        }
    };
    let a = scalar(alpha)?;
    let shift = shift.f_to_kind(kind)?.f_contiguous()?;
    // relu_z is saved for the backward: a pooled buffer, reused once autograd has let it go
    let rz = if keep_relu_z { Some(scratch(shape4(y)?, kind, order)?) } else { None };
    // q's plane k is y's block k, or, channel-major, y's block (k % N, k / N)
    let images = match q_layout {
        QLayout::LikeY => None,
        QLayout::ChannelMajor => Some(shape4(y)?[0] as usize),
    };
    dispatch_float!(kind, T => fwd::<T>(y, q, images, rz.as_ref(), &shift, T::from_f64(a), &b))?;
    Ok((y.shallow_clone(), rz))
}

/// [`forward`]'s kernel; `images` is N for a channel-major `q` (whose planes then run in its
/// (C, N) order, each collided into y's plane (n, c)), `None` for a `q` laid out like `y`.
#[allow(clippy::too_many_arguments)]
fn fwd<T: Elem>(
    y: &Tensor,
    q: &Tensor,
    images: Option<usize>,
    rz: Option<&Tensor>,
    shift: &Tensor,
    alpha: T,
    b: &Blocks,
) -> Result<()> {
    let (il, ol, wo, v) = (b.in_len(), b.out_len(), b.w.n_out * b.v, b.v);
    let c = shift.numel();
    // SAFETY: q and shift are only read; y and rz are dense with the same strides (y's layout,
    // checked by `plan`; rz a scratch buffer of y's shape and order) and each of their blocks is
    // written for exactly one of q's planes, in one task.
    let (qs, sh) = unsafe { (view::<T>(q), view::<T>(shift)) };
    let ys = unsafe { shared::<T>(y) };
    let rs = rz.map(|r| unsafe { shared::<T>(r) });
    if let Some(pb) = PlaneBox::new(b, false) {
        // small NCHW planes: a chunk of planes' box sums at once, then the collision per plane
        let hw = pb.plane();
        return parallel_for(b.count, b.grain(), |lo, hi| {
            let (mut tmp, mut pc) = (vec![T::ZERO; pb.scratch_len()], vec![T::ZERO; pb.scratch_len()]);
            for first in (lo..hi).step_by(pb.planes()) {
                let nb = pb.planes().min(hi - first);
                let pc = &mut pc[..nb * hw];
                pb.sum(&qs[first * hw..(first + nb) * hw], &mut tmp, pc);
                // SAFETY: the y (and rz) planes of this chunk's q planes are this task's alone.
                let planes = |blk: usize, len: usize| unsafe {
                    (ys.slice(blk * hw, len), rs.as_ref().map(|r| r.slice(blk * hw, len)))
                };
                match images {
                    None => {
                        let (yc, rc) = planes(first, nb * hw);
                        collide_planes(yc, pc, rc, sh, first, hw, alpha);
                    }
                    Some(n) => {
                        for (k, p) in pc.chunks_exact(hw).enumerate() {
                            let ch = (first + k) / n;
                            let (yp, rp) = planes((first + k) % n * c + ch, hw);
                            collide_planes(yp, p, rp, &sh[ch..ch + 1], 0, hw, alpha);
                        }
                    }
                }
            }
        });
    }
    if images.is_some() {
        return Err(Error::Runtime("internal: channel-major q off the plane path".into()));
    }
    parallel_for(b.count, b.grain(), |lo, hi| {
        let (mut vp, mut prow) = (vec![T::ZERO; row_buf_len(b)], vec![T::ZERO; wo]);
        for blk in lo..hi {
            // SAFETY: block ranges are disjoint.
            let yb = unsafe { ys.slice(blk * ol, ol) };
            let rb = rs.as_ref().map(|r| unsafe { r.slice(blk * ol, ol) });
            // NCHW: the block's channel shift; NHWC: one shift per channel of every pixel
            let shift = if v == 1 { &sh[blk % c..blk % c + 1] } else { sh };
            fwd_rows(&qs[blk * il..(blk + 1) * il], yb, rb, shift, alpha, b, &mut vp, &mut prow);
        }
    })
}

crate::multiversion! {
    /// One block of the row path: the box sum of `q` row by row ([`for_each_output_row`]), each row
    /// consumed by the collision into `y` (and `rz`); `shift` holds the block's shift (NCHW) or
    /// one per channel (NHWC).
    fn fwd_rows<T: Elem>(
        q: &[T],
        y: &mut [T],
        rz: Option<&mut [T]>,
        shift: &[T],
        alpha: T,
        b: &Blocks,
        vp: &mut [T],
        prow: &mut [T],
    ) {
        let mut rz = rz;
        let wo = prow.len();
        for_each_output_row(q, b, vp, prow, |o, p| {
            let yr = &mut y[o * wo..(o + 1) * wo];
            let rr = rz.as_deref_mut().map(|r| &mut r[o * wo..(o + 1) * wo]);
            if shift.len() == 1 {
                collide_plane(yr, p, rr, shift[0], alpha);
                return;
            }
            let v = shift.len();
            match rr {
                Some(rr) => {
                    for ((yp, pp), rp) in yr.chunks_exact_mut(v).zip(p.chunks_exact(v)).zip(rr.chunks_exact_mut(v)) {
                        collide_pixel(yp, pp, Some(rp), shift, alpha);
                    }
                }
                None => {
                    for (yp, pp) in yr.chunks_exact_mut(v).zip(p.chunks_exact(v)) {
                        collide_pixel(yp, pp, None, shift, alpha);
                    }
                }
            }
        });
    }
}

crate::multiversion! {
    /// The collision of consecutive NCHW planes of `hw` values (`y`, `p`, `rz` of equal length),
    /// the first being block `first`: each plane takes its channel's shift from `shift`.
    fn collide_planes<T: Elem>(
        y: &mut [T],
        p: &[T],
        rz: Option<&mut [T]>,
        shift: &[T],
        first: usize,
        hw: usize,
        alpha: T,
    ) {
        let c = shift.len();
        match rz {
            Some(rz) => {
                let planes = y.chunks_exact_mut(hw).zip(p.chunks_exact(hw)).zip(rz.chunks_exact_mut(hw));
                for (k, ((yp, pp), rp)) in planes.enumerate() {
                    collide_plane(yp, pp, Some(rp), shift[(first + k) % c], alpha);
                }
            }
            None => {
                for (k, (yp, pp)) in y.chunks_exact_mut(hw).zip(p.chunks_exact(hw)).enumerate() {
                    collide_plane(yp, pp, None, shift[(first + k) % c], alpha);
                }
            }
        }
    }
}

/// One NHWC pixel's collision, a shift per channel.
#[inline(always)]
fn collide_pixel<T: Elem>(y: &mut [T], p: &[T], rz: Option<&mut [T]>, shift: &[T], alpha: T) {
    match rz {
        Some(rz) => {
            for (((yv, &pv), rv), &s) in y.iter_mut().zip(p).zip(rz.iter_mut()).zip(shift) {
                *rv = collide(yv, pv, s, alpha);
            }
        }
        None => {
            for ((yv, &pv), &s) in y.iter_mut().zip(p).zip(shift) {
                collide(yv, pv, s, alpha);
            }
        }
    }
}

/// One plane's collision: `y += alpha * r` with `r = relu(y - p + s)`, `r` kept in `rz` if given.
#[inline(always)]
fn collide_plane<T: Elem>(y: &mut [T], p: &[T], rz: Option<&mut [T]>, s: T, alpha: T) {
    match rz {
        Some(rz) => y.iter_mut().zip(p).zip(rz.iter_mut()).for_each(|((yv, &pv), rv)| *rv = collide(yv, pv, s, alpha)),
        None => y.iter_mut().zip(p).for_each(|(yv, &pv)| {
            collide(yv, pv, s, alpha);
        }),
    }
}

/// Backward of [`forward`] for an input of shape `in_shape` (N, Cout, H, W): `gy` (when x or W
/// need it), `G = boxsum^T(alpha * grad * [relu_z > 0])` on the input grid as
/// [`AdjustGrad::OnInput`], and the requested reductions. `grad`, `relu_z`: (N, Cout, Ho, Wo).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    grad: &Tensor,
    relu_z: &Tensor,
    alpha: &Tensor,
    needs: &NeedsGrad,
    in_shape: [i64; 4],
    k: [i64; 2],
    g: &ConvGeometry,
    (kind, order): (Kind, Order),
) -> Result<CollisionGrads> {
    require(&[grad, relu_z], kind, order)?;
    if grad.size() != relu_z.size() {
        return Err(Error::Runtime(format!(
            "internal: grad {:?} and relu_z {:?} differ in shape",
            grad.size(),
            relu_z.size()
        )));
    }
    let gq = scratch(in_shape, kind, order)?;
    let b = plan(&gq, grad, k[0], k[1], g, kind, order)?;
    let a = scalar(alpha)?;
    let gy = if needs.main_path() { Some(scratch(shape4(grad)?, kind, order)?) } else { None };
    let c = grad.size()[1] as usize;
    let sums = dispatch_float!(kind, T => bwd::<T>(grad, relu_z, gy.as_ref(), &gq, T::from_f64(a), &b, c))?;
    sums.into_grads(kind, needs, gy, AdjustGrad::OnInput(gq))
}

fn bwd<T: Elem>(
    grad: &Tensor,
    relu_z: &Tensor,
    gy: Option<&Tensor>,
    gq: &Tensor,
    alpha: T,
    b: &Blocks,
    c: usize,
) -> Result<Sums> {
    let (il, ol, v) = (b.in_len(), b.out_len(), b.v);
    // Partial sums: NCHW one slot per plane (= block), NHWC one c-vector per image (= block).
    let slots = if v == 1 { b.count } else { b.count * c };
    let (mut part_b1, mut part_b2, mut part_a) = (vec![0.0f64; slots], vec![0.0f64; slots], vec![0.0f64; b.count]);
    // SAFETY: grad/relu_z are dense with equal strides and only read; gy (grad's shape and order)
    // and gq are scratch buffers nothing else holds; each block writes only its own ranges and slots.
    let (gs, rs) = unsafe { (view::<T>(grad), view::<T>(relu_z)) };
    let gys = gy.map(|t| unsafe { shared::<T>(t) });
    let gqs = unsafe { shared::<T>(gq) };
    let (pb1, pb2, pa) =
        (SharedMut(part_b1.as_mut_ptr()), SharedMut(part_b2.as_mut_ptr()), SharedMut(part_a.as_mut_ptr()));
    if let Some(pb) = PlaneBox::new(b, true) {
        // small NCHW planes: gz of a chunk of planes, then its transposed box sums at once
        let hw = pb.plane();
        parallel_for(b.count, b.grain(), |lo, hi| {
            let (mut gz, mut tmp) = (vec![T::ZERO; pb.scratch_len()], vec![T::ZERO; pb.scratch_len()]);
            let mut gy_scratch = if gys.is_none() { vec![T::ZERO; hw] } else { Vec::new() };
            for first in (lo..hi).step_by(pb.planes()) {
                let nb = pb.planes().min(hi - first);
                for (k, gzp) in gz[..nb * hw].chunks_exact_mut(hw).enumerate() {
                    let blk = first + k;
                    let (g, r) = (&gs[blk * hw..(blk + 1) * hw], &rs[blk * hw..(blk + 1) * hw]);
                    // SAFETY: block ranges and slots are disjoint.
                    let gyb = match &gys {
                        Some(t) => unsafe { t.slice(blk * hw, hw) },
                        None => &mut gy_scratch[..],
                    };
                    let [b1, b2, sa] = plane_bwd(g, r, gyb, gzp, alpha);
                    unsafe {
                        pb1.slice(blk, 1)[0] = b1;
                        pb2.slice(blk, 1)[0] = b2;
                        pa.slice(blk, 1)[0] = sa;
                    }
                }
                // SAFETY: block ranges are disjoint.
                let out = unsafe { gqs.slice(first * hw, nb * hw) };
                pb.sum(&gz[..nb * hw], &mut tmp, out);
            }
        })?;
        return Ok(reduce_sums(&part_a, &part_b1, &part_b2, c));
    }
    parallel_for(b.count, b.grain(), |lo, hi| {
        let (mut gz, mut acc) = (vec![T::ZERO; ol], vec![T::ZERO; (b.w.n_out * v).max(3 * c)]);
        let mut gy_scratch = if gys.is_none() { vec![T::ZERO; ol] } else { Vec::new() };
        for blk in lo..hi {
            let (g, r) = (&gs[blk * ol..(blk + 1) * ol], &rs[blk * ol..(blk + 1) * ol]);
            // SAFETY: block ranges and slots are disjoint.
            let gyb = match &gys {
                Some(t) => unsafe { t.slice(blk * ol, ol) },
                None => &mut gy_scratch[..],
            };
            let sa = if v == 1 {
                let [b1, b2, sa] = plane_bwd(g, r, gyb, &mut gz, alpha);
                unsafe {
                    pb1.slice(blk, 1)[0] = b1;
                    pb2.slice(blk, 1)[0] = b2;
                }
                sa
            } else {
                let (b1, b2) = unsafe { (pb1.slice(blk * c, c), pb2.slice(blk * c, c)) };
                pixels_bwd(g, r, gyb, &mut gz, alpha, &mut acc[..3 * c], b1, b2)
            };
            unsafe { pa.slice(blk, 1)[0] = sa };
            let out = unsafe { gqs.slice(blk * il, il) };
            backward_block(&gz, out, b, &mut acc[..b.w.n_out * v], None);
        }
    })?;
    Ok(reduce_sums(&part_a, &part_b1, &part_b2, c))
}
