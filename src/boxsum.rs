//! The box sum `S = boxsum_{kh x kw}(x)`: per-channel sums of every (dilated) window on the conv's
//! output grid, with zero padding, and its adjoint (the transposed box sum) for the backward.
//!
//! `x` (N, C, H, W) -> `S` (N, C, Ho, Wo) with `Ho = (H + 2p - d(kh-1) - 1) / s + 1`.
//!
//! On dense CPU float32/float64 tensors (NCHW or channels_last) it runs a separable kernel here:
//! a horizontal pass then a vertical pass, `kh + kw` adds per output instead of `kh * kw`, on
//! libtorch's thread pool. Elsewhere (CUDA, half types, odd strides) it uses libtorch:
//! `avg_pool2d(divisor_override=1)` when dilation is 1 and padding at most half the kernel, else a
//! depthwise conv with an all-ones kernel; the adjoints are `avg_pool2d_backward` (NCHW only) and
//! the conv's input gradient.
use crate::aten::{convolution_backward, parallel_for};
use crate::cpu::{self, Elem, Layout};
use crate::error::{Error, Result};
use crate::ic_conv::ConvGeometry;
use tch::{Kind, Tensor};

/// Elements of work per parallel task.
const GRAIN: usize = 1 << 15;

/// One spatial axis of the box: input size, output size, kernel, stride, padding, dilation.
#[derive(Debug, Clone, Copy)]
struct Axis {
    n_in: usize,
    n_out: usize,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
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
struct Blocks {
    count: usize,
    v: usize,
    h: Axis,
    w: Axis,
}

impl Blocks {
    fn new(x: &Tensor, lay: Layout, kh: i64, kw: i64, g: &ConvGeometry) -> Self {
        let s = x.size();
        let (n, c, hh, ww) = (s[0] as usize, s[1] as usize, s[2], s[3]);
        let axis = |dim: usize, n_in: i64, k: i64| Axis {
            n_in: n_in as usize,
            n_out: g.out_size(dim, n_in, k) as usize,
            k: k as usize,
            s: g.stride[dim] as usize,
            p: g.padding[dim] as usize,
            d: g.dilation[dim] as usize,
        };
        let (count, v) = match lay {
            Layout::Nchw { .. } => (n * c, 1),
            Layout::Nhwc { .. } => (n, c),
        };
        Blocks { count, v, h: axis(0, hh, kh), w: axis(1, ww, kw) }
    }
    fn in_len(&self) -> usize {
        self.h.n_in * self.w.n_in * self.v
    }
    fn out_len(&self) -> usize {
        self.h.n_out * self.w.n_out * self.v
    }
    /// Blocks per task so that each task has about GRAIN elements.
    fn grain(&self) -> usize {
        (GRAIN / self.in_len().max(1)).max(1)
    }
}

#[inline(always)]
fn add_into<T: Elem>(dst: &mut [T], src: &[T]) {
    for (a, &b) in dst.iter_mut().zip(src) {
        *a += b;
    }
}

/// Horizontal pass of one block: `tmp[r][o][:] = sum_j x[r][o*s + j*d - p][:]`.
fn horizontal<T: Elem>(x: &[T], tmp: &mut [T], rows: usize, ax: &Axis, v: usize) {
    tmp.fill(T::ZERO);
    let (wi, wo) = (ax.n_in * v, ax.n_out * v);
    for r in 0..rows {
        let (xr, tr) = (&x[r * wi..(r + 1) * wi], &mut tmp[r * wo..(r + 1) * wo]);
        for j in 0..ax.k {
            let (lo, hi) = ax.valid(j);
            if lo >= hi {
                continue;
            }
            let start = ax.src(lo, j);
            if v == 1 && ax.s == 1 {
                add_into(&mut tr[lo..hi], &xr[start..start + (hi - lo)]);
            } else if v == 1 {
                // strided: consecutive outputs read inputs `s` apart
                for (t, &xv) in tr[lo..hi].iter_mut().zip(xr[start..].iter().step_by(ax.s)) {
                    *t += xv;
                }
            } else {
                for o in lo..hi {
                    let i = ax.src(o, j);
                    add_into(&mut tr[o * v..(o + 1) * v], &xr[i * v..(i + 1) * v]);
                }
            }
        }
    }
}

/// Vertical pass of one block: `out[o][:] = sum_i tmp[o*s + i*d - p][:]` over rows of `len`.
fn vertical<T: Elem>(tmp: &[T], out: &mut [T], ax: &Axis, len: usize) {
    out.fill(T::ZERO);
    for i in 0..ax.k {
        let (lo, hi) = ax.valid(i);
        for o in lo..hi {
            let r = ax.src(o, i);
            add_into(&mut out[o * len..(o + 1) * len], &tmp[r * len..(r + 1) * len]);
        }
    }
}

/// Adjoint of [`vertical`]: `tmp[o*s + i*d - p][:] += g[o][:]`.
fn vertical_t<T: Elem>(g: &[T], tmp: &mut [T], ax: &Axis, len: usize) {
    tmp.fill(T::ZERO);
    for i in 0..ax.k {
        let (lo, hi) = ax.valid(i);
        for o in lo..hi {
            let r = ax.src(o, i);
            add_into(&mut tmp[r * len..(r + 1) * len], &g[o * len..(o + 1) * len]);
        }
    }
}

/// Adjoint of [`horizontal`]: `gx[r][o*s + j*d - p][:] += tmp[r][o][:]`.
fn horizontal_t<T: Elem>(tmp: &[T], gx: &mut [T], rows: usize, ax: &Axis, v: usize) {
    gx.fill(T::ZERO);
    let (wi, wo) = (ax.n_in * v, ax.n_out * v);
    for r in 0..rows {
        let (tr, gr) = (&tmp[r * wo..(r + 1) * wo], &mut gx[r * wi..(r + 1) * wi]);
        for j in 0..ax.k {
            let (lo, hi) = ax.valid(j);
            if lo >= hi {
                continue;
            }
            let start = ax.src(lo, j);
            if v == 1 && ax.s == 1 {
                add_into(&mut gr[start..start + (hi - lo)], &tr[lo..hi]);
            } else if v == 1 {
                for (g, &tv) in gr[start..].iter_mut().step_by(ax.s).zip(&tr[lo..hi]) {
                    *g += tv;
                }
            } else {
                for o in lo..hi {
                    let i = ax.src(o, j);
                    add_into(&mut gr[i * v..(i + 1) * v], &tr[o * v..(o + 1) * v]);
                }
            }
        }
    }
}

fn forward_cpu<T: Elem>(x: &Tensor, out: &Tensor, b: Blocks) -> Result<()> {
    // SAFETY: x is dense and only read; `out` is fresh and each block writes its own range.
    let (xs, os) = unsafe { (cpu::view::<T>(x), cpu::shared::<T>(out)) };
    let (il, ol) = (b.in_len(), b.out_len());
    parallel_for(b.count, b.grain(), |lo, hi| {
        let mut tmp = vec![T::ZERO; b.h.n_in * b.w.n_out * b.v];
        for blk in lo..hi {
            horizontal(&xs[blk * il..(blk + 1) * il], &mut tmp, b.h.n_in, &b.w, b.v);
            // SAFETY: block ranges are disjoint.
            let o = unsafe { os.slice(blk * ol, ol) };
            vertical(&tmp, o, &b.h, b.w.n_out * b.v);
        }
    })
}

fn backward_cpu<T: Elem>(g: &Tensor, gx: &Tensor, b: Blocks) -> Result<()> {
    // SAFETY: g is dense and only read; `gx` is fresh and each block writes its own range.
    let (gs, xs) = unsafe { (cpu::view::<T>(g), cpu::shared::<T>(gx)) };
    let (il, ol) = (b.in_len(), b.out_len());
    parallel_for(b.count, b.grain(), |lo, hi| {
        let mut tmp = vec![T::ZERO; b.h.n_in * b.w.n_out * b.v];
        for blk in lo..hi {
            vertical_t(&gs[blk * ol..(blk + 1) * ol], &mut tmp, &b.h, b.w.n_out * b.v);
            // SAFETY: block ranges are disjoint.
            let o = unsafe { xs.slice(blk * il, il) };
            horizontal_t(&tmp, o, b.h.n_in, &b.w, b.v);
        }
    })
}

/// Whether libtorch's box sum can be an average pool (dilation 1, padding at most half the kernel).
fn is_pool(kh: i64, kw: i64, g: &ConvGeometry) -> bool {
    g.dilation == [1, 1] && g.padding[0] <= kh / 2 && g.padding[1] <= kw / 2
}

fn ones_kernel(x: &Tensor, kh: i64, kw: i64) -> Result<Tensor> {
    Ok(Tensor::f_ones([x.size()[1], 1, kh, kw], (x.kind(), x.device()))?)
}

/// `x` (N, C, H, W) -> `S` (N, C, Ho, Wo). Geometry must already be validated (`ic_conv`).
pub fn boxsum(x: &Tensor, kh: i64, kw: i64, g: &ConvGeometry) -> Result<Tensor> {
    if let Some((kind, lay)) = cpu::dense(&[x]) {
        let b = Blocks::new(x, lay, kh, kw, g);
        let s = x.size();
        let out = cpu::empty([s[0], s[1], b.h.n_out as i64, b.w.n_out as i64], kind, matches!(lay, Layout::Nhwc { .. }))?;
        match kind {
            Kind::Float => forward_cpu::<f32>(x, &out, b)?,
            _ => forward_cpu::<f64>(x, &out, b)?,
        }
        return Ok(out);
    }
    if is_pool(kh, kw, g) {
        Ok(x.f_avg_pool2d([kh, kw], g.stride, g.padding, false, true, Some(1))?)
    } else {
        let ones = ones_kernel(x, kh, kw)?;
        Ok(x.f_conv2d(&ones, None::<Tensor>, g.stride, g.padding, g.dilation, x.size()[1])?)
    }
}

/// Adjoint of [`boxsum`]: `grad` (N, C, Ho, Wo) -> (N, C, H, W) on `x`'s grid.
pub fn boxsum_backward(grad: &Tensor, x: &Tensor, kh: i64, kw: i64, g: &ConvGeometry) -> Result<Tensor> {
    if let Some((kind, lay)) = cpu::dense(&[grad, x]) {
        let b = Blocks::new(x, lay, kh, kw, g);
        let gx = cpu::empty(x.size().try_into().expect("4-D"), kind, matches!(lay, Layout::Nhwc { .. }))?;
        let g_c = grad; // same layout family as x (checked by `dense`)
        match kind {
            Kind::Float => backward_cpu::<f32>(g_c, &gx, b)?,
            _ => backward_cpu::<f64>(g_c, &gx, b)?,
        }
        return Ok(gx);
    }
    // avg_pool2d_backward only for NCHW: libtorch's CUDA kernel for channels_last input gives wrong
    // gradients with divisor_override (measured on torch 2.11, H200: max error 8.7 in float64).
    if is_pool(kh, kw, g) && x.is_contiguous() && grad.is_contiguous() {
        Ok(x.f_avg_pool2d_backward(grad, [kh, kw], g.stride, g.padding, false, true, Some(1))?)
    } else {
        let ones = ones_kernel(x, kh, kw)?;
        let (gi, _) = convolution_backward(grad, x, &ones, g.stride, g.padding, g.dilation, x.size()[1], true, false)?;
        gi.ok_or_else(|| Error::Runtime("convolution_backward returned no input gradient".into()))
    }
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
        // rows=1, x = [1, 2, 3, 4], k=3, p=1: [0+1+2, 1+2+3, 2+3+4, 3+4+0] = [3, 6, 9, 7]
        let ax = Axis { n_in: 4, n_out: 4, k: 3, s: 1, p: 1, d: 1 };
        let x = [1.0f64, 2.0, 3.0, 4.0];
        let mut t = [0.0; 4];
        horizontal(&x, &mut t, 1, &ax, 1);
        assert_eq!(t, [3.0, 6.0, 9.0, 7.0]);
        // adjoint: <Ax, y> == <x, A^T y>
        let y = [0.5f64, -1.0, 2.0, 0.25];
        let mut aty = [0.0; 4];
        horizontal_t(&y, &mut aty, 1, &ax, 1);
        let lhs: f64 = t.iter().zip(&y).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&aty).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-12);
    }
}
