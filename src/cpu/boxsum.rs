//! The box sum on dense CPU tensors: `S = boxsum_{kh x kw}(x)`, per-channel sums of every
//! (dilated) window on the conv's output grid with zero padding, and its adjoint.
//!
//! `x` (N, C, H, W) -> `S` (N, C, Ho, Wo), float32/float64, NCHW or channels_last.
//!
//! A separable kernel: a vertical pass then a horizontal pass per output row, `kh + kw` adds per
//! output instead of `kh * kw`, with both passes in L1, on libtorch's thread pool. The row
//! functions are shared with `collision_box.rs`, which consumes each output row as it is built.
use super::dense::{require, shared, view, Order};
use super::simd;
use crate::aten::parallel_for;
use crate::dispatch_float;
use crate::dtype::Elem;
use crate::error::Result;
use crate::geometry::ConvGeometry;
use tch::{Kind, Tensor};

/// Elements of work per parallel task.
const GRAIN: usize = 1 << 15;

/// One spatial axis of the box: input size, output size, kernel, stride, padding, dilation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Axis {
    pub n_in: usize,
    pub n_out: usize,
    pub k: usize,
    pub s: usize,
    pub p: usize,
    pub d: usize,
}

impl Axis {
    /// Output positions `o` in `[lo, hi)` whose tap `j` reads input `o*s + j*d - p` inside `[0, n_in)`.
    #[inline]
    fn valid(&self, j: usize) -> (usize, usize) {
        let off = (j * self.d) as i64 - self.p as i64;
        let s = self.s as i64;
        let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
        let last = self.n_in as i64 - 1 - off;
        let hi = if last < 0 { 0 } else { (last / s + 1).min(self.n_out as i64) };
        (lo as usize, hi.max(lo) as usize)
    }
    #[inline]
    fn src(&self, o: usize, j: usize) -> usize {
        o * self.s + j * self.d - self.p
    }
}

/// A batch of blocks, each `[rows][cols][v]` contiguous: NCHW gives N*C blocks with v = 1,
/// NHWC gives N blocks with v = C.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Blocks {
    pub count: usize,
    pub v: usize,
    pub h: Axis,
    pub w: Axis,
}

impl Blocks {
    /// Blocks of an input of shape `s` (N, C, H, W).
    pub(crate) fn new(s: &[i64], order: Order, kh: i64, kw: i64, g: &ConvGeometry) -> Self {
        let (n, c, hh, ww) = (s[0] as usize, s[1] as usize, s[2], s[3]);
        let axis = |dim: usize, n_in: i64, k: i64| Axis {
            n_in: n_in as usize,
            n_out: g.out_size(dim, n_in, k) as usize,
            k: k as usize,
            s: g.stride[dim] as usize,
            p: g.padding[dim] as usize,
            d: g.dilation[dim] as usize,
        };
        let (count, v) = match order {
            Order::Nchw => (n * c, 1),
            Order::Nhwc => (n, c),
        };
        Blocks { count, v, h: axis(0, hh, kh), w: axis(1, ww, kw) }
    }
    pub(crate) fn in_len(&self) -> usize {
        self.h.n_in * self.w.n_in * self.v
    }
    pub(crate) fn out_len(&self) -> usize {
        self.h.n_out * self.w.n_out * self.v
    }
    /// Blocks per task so that each task has about GRAIN elements.
    pub(crate) fn grain(&self) -> usize {
        (GRAIN / self.in_len().max(1)).max(1)
    }
}

#[inline(always)]
fn add_into<T: Elem>(dst: &mut [T], src: &[T]) {
    for (a, &b) in dst.iter_mut().zip(src) {
        *a += b;
    }
}

/// `dst = a + b + c` elementwise, in that order.
#[inline(always)]
fn sum_three<T: Elem>(dst: &mut [T], a: &[T], b: &[T], c: &[T]) {
    let n = dst.len();
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    for (i, t) in dst.iter_mut().enumerate() {
        *t = a[i] + b[i] + c[i];
    }
}

/// Input row read by output row `o` through tap `i`, if inside `[0, n_in)`.
#[inline]
fn tap_row(ax: &Axis, o: usize, i: usize) -> Option<usize> {
    let r = (o * ax.s + i * ax.d) as i64 - ax.p as i64;
    (r >= 0 && (r as usize) < ax.n_in).then_some(r as usize)
}

/// Output row that reads input row `r` through tap `i`, if any.
#[inline]
fn tap_out(ax: &Axis, r: usize, i: usize) -> Option<usize> {
    let q = (r + ax.p) as i64 - (i * ax.d) as i64;
    if q < 0 || !(q as usize).is_multiple_of(ax.s) {
        return None;
    }
    let o = q as usize / ax.s;
    (o < ax.n_out).then_some(o)
}

/// `dst = sum of rows`, the rows given by `rows` (`dst = 0` when there are none).
#[inline(always)]
fn sum_rows<'a, T: Elem + 'a>(dst: &mut [T], mut rows: impl Iterator<Item = &'a [T]>) {
    match rows.next() {
        None => dst.fill(T::ZERO),
        Some(a) => {
            // the first rows in one pass: the same additions, in the same order, as copy-then-add
            match (rows.next(), rows.next()) {
                (Some(b), Some(c)) => sum_three(dst, a, b, c),
                (Some(b), None) => dst.iter_mut().zip(a.iter().zip(b)).for_each(|(t, (&a, &b))| *t = a + b),
                (None, _) => dst.copy_from_slice(a),
            }
            rows.for_each(|r| add_into(dst, r));
        }
    }
}

/// One output row of the horizontal pass: `out[o][:] = sum_j vp[o*s + j*d][:]`, where `vp` is
/// the input row with `p` zero columns on each side (so every tap is in bounds); `full` is scratch
/// for a stride on NCHW (see [`row_buf_len`]).
#[inline(always)]
fn horizontal_row<T: Elem>(vp: &[T], out: &mut [T], ax: &Axis, v: usize, full: &mut [T]) {
    let len = out.len();
    if ax.s == 1 && ax.k == 3 {
        // the three shifted slices in one pass
        sum_three(out, vp, &vp[ax.d * v..], &vp[2 * ax.d * v..]);
    } else if ax.s == 1 {
        // k shifted copies: contiguous slices, vectorised
        out.copy_from_slice(&vp[..len]);
        for j in 1..ax.k {
            add_into(out, &vp[j * ax.d * v..j * ax.d * v + len]);
        }
    } else if v == 1 && ax.s == 2 && ax.k == 3 && ax.d == 1 {
        // out[o] = vp[2o] + vp[2o + 1] + vp[2o + 2]: 8 at a time (AVX2, f32), then as pairs
        let done = simd::stride2_taps3(&vp[..2 * len + 1], out);
        let pairs = vp[2 * done..2 * len].chunks_exact(2);
        let next = vp[2 * done + 2..2 * len + 1].iter().step_by(2);
        for ((t, p), &c) in out[done..].iter_mut().zip(pairs).zip(next) {
            *t = p[0] + p[1] + c;
        }
    } else if v == 1 {
        // the stride-1 sums over the outputs' span (shifted slices, vectorised), then every s-th
        let m = (len - 1) * ax.s + 1;
        let f = &mut full[..m];
        f.copy_from_slice(&vp[..m]);
        for j in 1..ax.k {
            add_into(f, &vp[j * ax.d..j * ax.d + m]);
        }
        out.iter_mut().zip(f.iter().step_by(ax.s)).for_each(|(t, &x)| *t = x);
    } else {
        for (o, t) in out.chunks_exact_mut(v).enumerate() {
            let base = o * ax.s * v;
            t.copy_from_slice(&vp[base..base + v]);
            for j in 1..ax.k {
                add_into(t, &vp[base + j * ax.d * v..base + (j * ax.d + 1) * v]);
            }
        }
    }
}

/// Adjoint of [`horizontal_row`] with the padding cropped: `gx[o*s + j*d - p][:] += acc[o][:]`;
/// `full` is scratch for a stride on NCHW (see [`row_t_buf_len`]).
#[inline(always)]
fn horizontal_row_t<T: Elem>(acc: &[T], gx: &mut [T], ax: &Axis, v: usize, full: &mut [T]) {
    gx.fill(T::ZERO);
    if ax.s > 1 && v == 1 {
        // the outputs spread to every s-th place of their span (zeros between), then each tap as a
        // shifted slice add, cropped: the same additions per element, in the same tap order
        let m = (acc.len() - 1) * ax.s + 1;
        let f = &mut full[..m];
        f.fill(T::ZERO);
        f.iter_mut().step_by(ax.s).zip(acc).for_each(|(t, &a)| *t = a);
        for j in 0..ax.k {
            let off = (j * ax.d) as isize - ax.p as isize;
            let (lo, hi) = (0.max(-off), (m as isize).min(gx.len() as isize - off));
            if lo < hi {
                let (lo, hi) = (lo as usize, hi as usize);
                let g0 = (lo as isize + off) as usize;
                add_into(&mut gx[g0..g0 + hi - lo], &f[lo..hi]);
            }
        }
        return;
    }
    for j in 0..ax.k {
        let (lo, hi) = ax.valid(j);
        if lo >= hi {
            continue;
        }
        let start = ax.src(lo, j);
        if ax.s == 1 {
            add_into(&mut gx[start * v..(start + hi - lo) * v], &acc[lo * v..hi * v]);
        } else if v == 1 {
            for (g, &a) in gx[start..].iter_mut().step_by(ax.s).zip(&acc[lo..hi]) {
                *g += a;
            }
        } else {
            for o in lo..hi {
                let i = ax.src(o, j) * v;
                add_into(&mut gx[i..i + v], &acc[o * v..(o + 1) * v]);
            }
        }
    }
}

crate::multiversion! {
    /// Box sum of one block, an output row at a time: the valid input rows of its vertical taps
    /// are summed into the middle of the padded row (one pass, no zero fill), then the horizontal
    /// taps are summed from it into the output row. Both passes stay in L1. `buf`:
    /// [`row_buf_len`] values.
    fn forward_block<T: Elem>(x: &[T], out: &mut [T], b: &Blocks, buf: &mut [T]) {
        let (wi, wo, pad) = (b.w.n_in * b.v, b.w.n_out * b.v, b.w.p * b.v);
        let (vp, full) = buf.split_at_mut(padded_len(b));
        for (o, out_row) in out.chunks_exact_mut(wo).enumerate() {
            let rows = (0..b.h.k).filter_map(|i| tap_row(&b.h, o, i)).map(|r| &x[r * wi..(r + 1) * wi]);
            sum_rows(&mut vp[pad..pad + wi], rows);
            horizontal_row(vp, out_row, &b.w, b.v, full);
        }
    }
}

crate::multiversion! {
    /// Adjoint of [`forward_block`], an input row at a time: the output-gradient rows that read
    /// input row `r` are summed into `acc`, then scattered along the row by the horizontal adjoint.
    /// With `sub = Some(row)` (one input row of scratch) the result is subtracted from `gx` instead
    /// of written to it. `acc`: [`row_t_buf_len`] values.
    pub(crate) fn backward_block<T: Elem>(g: &[T], gx: &mut [T], b: &Blocks, acc: &mut [T], sub: Option<&mut [T]>) {
        let mut sub = sub;
        let (wi, wo) = (b.w.n_in * b.v, b.w.n_out * b.v);
        let (acc, full) = acc.split_at_mut(wo);
        for (r, gx_row) in gx.chunks_exact_mut(wi).enumerate() {
            let mut rows = (0..b.h.k).filter_map(|i| tap_out(&b.h, r, i)).map(|o| &g[o * wo..(o + 1) * wo]).peekable();
            if rows.peek().is_none() {
                if sub.is_none() {
                    gx_row.fill(T::ZERO);
                }
                continue;
            }
            sum_rows(acc, rows);
            match sub.as_deref_mut() {
                None => horizontal_row_t(acc, gx_row, &b.w, b.v, full),
                Some(row) => {
                    horizontal_row_t(acc, row, &b.w, b.v, full);
                    gx_row.iter_mut().zip(row.iter()).for_each(|(a, &v)| *a = *a - v);
                }
            }
        }
    }
}

/// Length of the `acc` buffer [`backward_block`] needs: one output row, and with a stride on
/// NCHW the span that the horizontal adjoint spreads it over.
pub(crate) fn row_t_buf_len(b: &Blocks) -> usize {
    b.w.n_out * b.v + strided_span(b)
}

/// With a stride on NCHW, the input span of one output row (from its first output's first tap to
/// its last output's), over which the strided horizontal passes work at stride 1; else 0.
fn strided_span(b: &Blocks) -> usize {
    if b.w.s > 1 && b.v == 1 {
        (b.w.n_out.max(1) - 1) * b.w.s + 1
    } else {
        0
    }
}

/// Length of the padded row.
fn padded_len(b: &Blocks) -> usize {
    (b.w.n_in + 2 * b.w.p) * b.v
}

/// Length of the row buffer [`for_each_output_row`] and [`forward_block`] need: the padded row,
/// and with a stride on NCHW the stride-1 sums that [`horizontal_row`] picks from.
pub(crate) fn row_buf_len(b: &Blocks) -> usize {
    padded_len(b) + strided_span(b)
}

/// Box sum of one block, handing each output row (`b.w.n_out * b.v` values, built in `row`) to
/// `f(o, row)` instead of storing it: lets a consumer fuse its own elementwise work.
#[inline(always)]
pub(crate) fn for_each_output_row<T: Elem>(
    x: &[T],
    b: &Blocks,
    vp: &mut [T],
    row: &mut [T],
    mut f: impl FnMut(usize, &[T]),
) {
    let (wi, pad) = (b.w.n_in * b.v, b.w.p * b.v);
    let (vp, full) = vp.split_at_mut(padded_len(b));
    for o in 0..b.h.n_out {
        let rows = (0..b.h.k).filter_map(|i| tap_row(&b.h, o, i)).map(|r| &x[r * wi..(r + 1) * wi]);
        sum_rows(&mut vp[pad..pad + wi], rows);
        horizontal_row(vp, row, &b.w, b.v, full);
        f(o, row);
    }
}

fn forward_cpu<T: Elem>(x: &Tensor, out: &Tensor, b: Blocks) -> Result<()> {
    // SAFETY: x is dense and only read; `out` is fresh and each block writes its own range.
    let (xs, os) = unsafe { (view::<T>(x), shared::<T>(out)) };
    let (il, ol) = (b.in_len(), b.out_len());
    parallel_for(b.count, b.grain(), |lo, hi| {
        let mut vp = vec![T::ZERO; row_buf_len(&b)];
        for blk in lo..hi {
            // SAFETY: block ranges are disjoint.
            let o = unsafe { os.slice(blk * ol, ol) };
            forward_block(&xs[blk * il..(blk + 1) * il], o, &b, &mut vp);
        }
    })
}

/// `gx = boxsum^T(g)`, or `gx -= boxsum^T(g)` with `sub`, over all blocks in parallel.
fn backward_cpu<T: Elem>(g: &Tensor, gx: &Tensor, b: Blocks, sub: bool) -> Result<()> {
    // SAFETY: g is dense and only read; `gx` is dense, fresh or owned by the caller, and each block
    // writes only its own range.
    let (gs, xs) = unsafe { (view::<T>(g), shared::<T>(gx)) };
    let (il, ol) = (b.in_len(), b.out_len());
    parallel_for(b.count, b.grain(), |lo, hi| {
        let mut acc = vec![T::ZERO; row_t_buf_len(&b)];
        let mut row = if sub { vec![T::ZERO; b.w.n_in * b.v] } else { Vec::new() };
        for blk in lo..hi {
            // SAFETY: block ranges are disjoint.
            let o = unsafe { xs.slice(blk * il, il) };
            backward_block(&gs[blk * ol..(blk + 1) * ol], o, &b, &mut acc, sub.then_some(&mut row[..]));
        }
    })
}

/// Makes a kernel's output: [`super::dense::empty`] for a tensor the caller may keep,
/// [`super::workspace::scratch`] for one that does not outlive the op call.
pub type Alloc = fn([i64; 4], Kind, Order) -> Result<Tensor>;

/// `x` (N, C, H, W) -> `S` (N, C, Ho, Wo) in x's memory order, in a tensor from `alloc`. `x` must
/// be dense in `order`.
pub fn forward(
    x: &Tensor,
    kh: i64,
    kw: i64,
    g: &ConvGeometry,
    (kind, order): (Kind, Order),
    alloc: Alloc,
) -> Result<Tensor> {
    require(&[x], kind, order)?;
    let s = x.size();
    let b = Blocks::new(&s, order, kh, kw, g);
    let out = alloc([s[0], s[1], b.h.n_out as i64, b.w.n_out as i64], kind, order)?;
    dispatch_float!(kind, T => forward_cpu::<T>(x, &out, b))?;
    Ok(out)
}

/// Adjoint of [`forward`]: `grad` (N, C, Ho, Wo) -> (N, C, H, W) = `in_shape`, in grad's order,
/// in a tensor from `alloc`.
pub fn backward(
    grad: &Tensor,
    in_shape: [i64; 4],
    kh: i64,
    kw: i64,
    g: &ConvGeometry,
    (kind, order): (Kind, Order),
    alloc: Alloc,
) -> Result<Tensor> {
    require(&[grad], kind, order)?;
    let b = Blocks::new(&in_shape, order, kh, kw, g);
    check_grid(grad, &in_shape, &b)?;
    let gx = alloc(in_shape, kind, order)?;
    dispatch_float!(kind, T => backward_cpu::<T>(grad, &gx, b, false))?;
    Ok(gx)
}

/// `dst -= boxsum^T(grad)` in place: `dst` (N, C, H, W) and `grad` (N, C, Ho, Wo) dense in
/// `order`. Saves the caller a temporary the size of `dst` and a pass over it.
pub fn backward_sub_(
    dst: &Tensor,
    grad: &Tensor,
    kh: i64,
    kw: i64,
    g: &ConvGeometry,
    kind: Kind,
    order: Order,
) -> Result<()> {
    require(&[grad, dst], kind, order)?;
    let b = Blocks::new(&dst.size(), order, kh, kw, g);
    check_grid(grad, &dst.size(), &b)?;
    dispatch_float!(kind, T => backward_cpu::<T>(grad, dst, b, true))
}

/// `grad` is the box sum's output grid for an input of shape `in_shape`.
fn check_grid(grad: &Tensor, in_shape: &[i64], b: &Blocks) -> Result<()> {
    let gs = grad.size();
    if gs[..2] != in_shape[..2] || gs[2] != b.h.n_out as i64 || gs[3] != b.w.n_out as i64 {
        return Err(crate::error::Error::Runtime(format!(
            "internal: box-sum gradient {gs:?} does not fit an input of shape {in_shape:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ranges() {
        // n_in 5, k 3, s 1, p 1, d 1 -> n_out 5; tap 0 reads o-1: valid for o in [1, 5)
        let ax = Axis { n_in: 5, n_out: 5, k: 3, s: 1, p: 1, d: 1 };
        assert_eq!(ax.valid(0), (1, 5));
        assert_eq!(ax.valid(1), (0, 5));
        assert_eq!(ax.valid(2), (0, 4));
        // stride 2, padding 0: n_out 2, tap 2 reads 2o+2 < 5 -> o in [0, 2)
        let ax = Axis { n_in: 5, n_out: 2, k: 3, s: 2, p: 0, d: 1 };
        assert_eq!(ax.valid(2), (0, 2));
        // padding larger than the kernel reach: tap 0 at p=3 needs o >= 3
        let ax = Axis { n_in: 2, n_out: 6, k: 1, s: 1, p: 3, d: 1 };
        assert_eq!(ax.valid(0), (3, 5));
    }

    #[test]
    fn one_dim_box_sum_by_hand() {
        // x = [1, 2, 3, 4], k=3, p=1: [0+1+2, 1+2+3, 2+3+4, 3+4+0] = [3, 6, 9, 7]
        let ax = Axis { n_in: 4, n_out: 4, k: 3, s: 1, p: 1, d: 1 };
        let vp = [0.0f64, 1.0, 2.0, 3.0, 4.0, 0.0]; // x with p zeros each side
        let mut t = [0.0; 4];
        horizontal_row(&vp, &mut t, &ax, 1, &mut [0.0; 16]);
        assert_eq!(t, [3.0, 6.0, 9.0, 7.0]);
        // adjoint: <Ax, y> == <x, A^T y>
        let y = [0.5f64, -1.0, 2.0, 0.25];
        let mut aty = [0.0; 4];
        horizontal_row_t(&y, &mut aty, &ax, 1, &mut [0.0; 16]);
        let lhs: f64 = t.iter().zip(&y).map(|(a, b)| a * b).sum();
        let rhs: f64 = vp[1..5].iter().zip(&aty).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-12);
        // stride 2, dilation 2, p=2 on 5 inputs: n_out 3, taps o*2 + {0,2,4} - 2
        let ax = Axis { n_in: 5, n_out: 3, k: 3, s: 2, p: 2, d: 2 };
        let vp = [0.0f64, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0];
        let mut t = [0.0; 3];
        horizontal_row(&vp, &mut t, &ax, 1, &mut [0.0; 16]);
        assert_eq!(t, [0.0 + 1.0 + 3.0, 1.0 + 3.0 + 5.0, 3.0 + 5.0 + 0.0]);
        let y = [1.0f64, -2.0, 0.5];
        let mut aty = [0.0; 5];
        horizontal_row_t(&y, &mut aty, &ax, 1, &mut [0.0; 16]);
        let lhs: f64 = t.iter().zip(&y).map(|(a, b)| a * b).sum();
        let rhs: f64 = vp[2..7].iter().zip(&aty).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-12);
    }

    #[test]
    fn row_taps_match() {
        // every (output row, tap) that reads an input row is found again from that input row
        let ax = Axis { n_in: 7, n_out: 4, k: 3, s: 2, p: 1, d: 2 };
        for o in 0..ax.n_out {
            for i in 0..ax.k {
                if let Some(r) = tap_row(&ax, o, i) {
                    assert_eq!(tap_out(&ax, r, i), Some(o));
                }
            }
        }
        for r in 0..ax.n_in {
            for i in 0..ax.k {
                if let Some(o) = tap_out(&ax, r, i) {
                    assert_eq!(tap_row(&ax, o, i), Some(r));
                }
            }
        }
    }
}
