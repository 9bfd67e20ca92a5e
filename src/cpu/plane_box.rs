//! The stride-1 box sum of whole NCHW channel planes, several planes at a time, as flat passes.
//!
//! `boxsum.rs` works an output row at a time. On the small planes of the deep layers (7x7, 14x14)
//! a row is a handful of values, and the per-row work (finding the taps, bounds, the row loops)
//! costs more than the adds: at 512@7 a fused forward spent about 6 ns per element. Here a chunk
//! of consecutive planes (about [`CHUNK`] values) is one flat array, and each tap is one pass over
//! it: `out[x] += src[x + offset]` where a per-tap mask says that the tap stays inside the plane
//! (the row for a vertical tap, the column for a horizontal one), else 0 is added. Vertical taps
//! first into a scratch array, then horizontal ones into the output, each in tap order: the same
//! additions in the same order as the row kernels, so the results are the same bits.
//!
//! Applies when the output grid is the input grid (stride 1 and `2p = d (k - 1)` on both axes,
//! e.g. 3x3 with padding 1): [`PlaneBox::new`] says `None` otherwise. The adjoint (`transpose`)
//! is the same sum with every tap offset negated.
use super::boxsum::{Axis, Blocks};
use crate::dtype::Elem;

/// Values per chunk of planes: the chunk and its scratch stay in L1/L2.
const CHUNK: usize = 4096;

/// One tap: the flat offset it reads at, and for each position of a chunk whether it is inside.
struct Tap {
    offset: isize,
    inside: Vec<bool>,
}

/// The taps of a box on planes of one size, and the chunk size in planes.
pub(crate) struct PlaneBox {
    plane: usize,
    planes: usize,
    vertical: Vec<Tap>,
    horizontal: Vec<Tap>,
}

/// The taps of `ax` on `planes` planes of `rows` x `cols` values: vertical taps move by whole
/// rows (`stride` = cols), horizontal ones by single values. `transpose` negates every offset.
/// One plane's masks are built row by row, then repeated.
fn taps(ax: &Axis, vertical: bool, rows: usize, cols: usize, planes: usize, transpose: bool) -> Vec<Tap> {
    (0..ax.k)
        .map(|j| {
            let mut off = (j * ax.d) as isize - ax.p as isize;
            if transpose {
                off = -off;
            }
            let inside_at = |pos: usize, n: usize| (0..n as isize).contains(&(pos as isize + off));
            let mut plane = Vec::with_capacity(rows * cols);
            for r in 0..rows {
                if vertical {
                    plane.extend(std::iter::repeat_n(inside_at(r, rows), cols));
                } else {
                    plane.extend((0..cols).map(|c| inside_at(c, cols)));
                }
            }
            let stride = if vertical { cols as isize } else { 1 };
            Tap { offset: off * stride, inside: plane.repeat(planes) }
        })
        .collect()
}

impl PlaneBox {
    /// The flat form of `b`'s box sum (or its adjoint), or `None` when it does not apply: not
    /// NCHW (`v` > 1), or the output grid is not the input grid.
    pub(crate) fn new(b: &Blocks, transpose: bool) -> Option<Self> {
        if !Self::applies(b) {
            return None;
        }
        let (rows, cols) = (b.h.n_in, b.w.n_in);
        let plane = rows * cols;
        // no more planes per chunk than the call has: the masks are built per call
        let planes = (CHUNK / plane.max(1)).clamp(1, b.count.max(1));
        Some(Self {
            plane,
            planes,
            vertical: taps(&b.h, true, rows, cols, planes, transpose),
            horizontal: taps(&b.w, false, rows, cols, planes, transpose),
        })
    }

    /// Whether `b`'s box sum has a flat form ([`Self::new`] builds it): NCHW (`v` = 1), stride
    /// 1 and the output grid the input grid on both axes.
    pub(crate) fn applies(b: &Blocks) -> bool {
        let same = |ax: &Axis| ax.s == 1 && ax.n_out == ax.n_in && 2 * ax.p == ax.d * (ax.k - 1);
        b.v == 1 && same(&b.h) && same(&b.w)
    }

    /// Values per plane.
    pub(crate) fn plane(&self) -> usize {
        self.plane
    }

    /// Planes per chunk: [`Self::sum`] takes at most this many at once.
    pub(crate) fn planes(&self) -> usize {
        self.planes
    }

    /// Scratch length [`Self::sum`] needs.
    pub(crate) fn scratch_len(&self) -> usize {
        self.planes * self.plane
    }

    /// `out` = the box sum (or adjoint) of the whole planes in `src` (`out.len() == src.len()`, at
    /// most [`Self::planes`] planes), with `tmp` as scratch.
    pub(crate) fn sum<T: Elem>(&self, src: &[T], tmp: &mut [T], out: &mut [T]) {
        debug_assert!(
            src.len() == out.len() && src.len().is_multiple_of(self.plane) && src.len() <= self.scratch_len()
        );
        sum_planes(self, src, tmp, out)
    }
}

crate::multiversion! {
    fn sum_planes<T: Elem>(pb: &PlaneBox, src: &[T], tmp: &mut [T], out: &mut [T]) {
        let tmp = &mut tmp[..src.len()];
        if let (Ok(v), Ok(h)) = (<&[Tap; 3]>::try_from(&pb.vertical[..]), <&[Tap; 3]>::try_from(&pb.horizontal[..])) {
            // three taps (3x3 boxes): each axis in one pass instead of a zero fill and three
            sum_three(tmp, src, v);
            sum_three(out, tmp, h);
            return;
        }
        tmp.fill(T::ZERO);
        for t in &pb.vertical {
            add_tap(tmp, src, t);
        }
        out.fill(T::ZERO);
        for t in &pb.horizontal {
            add_tap(out, tmp, t);
        }
    }
}

/// `dst[x] = ((0 + tap 0) + tap 1) + tap 2`, each tap adding `src[x + offset]` where it is inside
/// and 0 elsewhere: the additions of a zero fill and three [`add_tap`] passes, in one pass.
#[inline(always)]
fn sum_three<T: Elem>(dst: &mut [T], src: &[T], taps: &[Tap; 3]) {
    let len = dst.len();
    let tap = |t: &Tap, x: usize| {
        let at = x as isize + t.offset;
        if t.inside[x] && (0..len as isize).contains(&at) {
            src[at as usize]
        } else {
            T::ZERO
        }
    };
    // positions where every tap's source index is inside the chunk
    let lo = taps.iter().map(|t| (-t.offset).max(0) as usize).max().unwrap_or(0).min(len);
    let hi = taps.iter().map(|t| (len as isize - t.offset.max(0)).max(0) as usize).min().unwrap_or(len).max(lo);
    for x in (0..lo).chain(hi..len) {
        dst[x] = ((T::ZERO + tap(&taps[0], x)) + tap(&taps[1], x)) + tap(&taps[2], x);
    }
    let at = |t: &Tap| (lo as isize + t.offset) as usize;
    let (a, b, c) = (&src[at(&taps[0])..][..hi - lo], &src[at(&taps[1])..][..hi - lo], &src[at(&taps[2])..][..hi - lo]);
    let (ma, mb, mc) = (&taps[0].inside[lo..hi], &taps[1].inside[lo..hi], &taps[2].inside[lo..hi]);
    for (i, d) in dst[lo..hi].iter_mut().enumerate() {
        let pick = |m: bool, v: T| if m { v } else { T::ZERO };
        *d = ((T::ZERO + pick(ma[i], a[i])) + pick(mb[i], b[i])) + pick(mc[i], c[i]);
    }
}

/// `dst[x] += src[x + offset]` where the tap is inside, else `+= 0`.
#[inline(always)]
fn add_tap<T: Elem>(dst: &mut [T], src: &[T], t: &Tap) {
    let len = dst.len() as isize;
    // positions whose source index is inside the chunk; outside them the tap is never inside
    let (lo, hi) = (0.max(-t.offset), len.min(len - t.offset));
    if lo >= hi {
        return;
    }
    let (lo, hi) = (lo as usize, hi as usize);
    let s = (lo as isize + t.offset) as usize;
    let src = &src[s..s + (hi - lo)];
    for ((d, &v), &m) in dst[lo..hi].iter_mut().zip(src).zip(&t.inside[lo..hi]) {
        *d += if m { v } else { T::ZERO };
    }
}

#[cfg(test)]
mod tests {
    use super::super::boxsum::{backward_block, for_each_output_row, row_buf_len};
    use super::*;
    use crate::geometry::ConvGeometry;

    /// The flat sums give the row kernels' bits, forward and adjoint, over several chunks of
    /// planes and box shapes.
    #[test]
    fn flat_planes_match_the_row_kernels() {
        for (h, w, k, d) in [(7, 7, 3, 1), (5, 9, 3, 1), (14, 14, 5, 1), (6, 5, 3, 2), (4, 4, 1, 1), (1, 3, 3, 1)] {
            let p = d * (k - 1) / 2;
            let g = ConvGeometry { stride: [1, 1], padding: [p as i64; 2], dilation: [d as i64; 2], groups: 1 };
            let planes = 2 * (CHUNK / (h * w)) + 3;
            let b =
                Blocks::new(&[1, planes as i64, h as i64, w as i64], super::super::Order::Nchw, k as i64, k as i64, &g);
            let x: Vec<f32> = (0..planes * h * w).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect();
            for transpose in [false, true] {
                let pb = PlaneBox::new(&b, transpose).expect("same grid");
                let (mut tmp, mut flat) = (vec![0.0f32; pb.scratch_len()], vec![0.0f32; x.len()]);
                for (src, out) in x.chunks(pb.scratch_len()).zip(flat.chunks_mut(pb.scratch_len())) {
                    pb.sum(src, &mut tmp, out);
                }
                let mut rows = vec![0.0f32; x.len()];
                for (src, out) in x.chunks(h * w).zip(rows.chunks_mut(h * w)) {
                    if transpose {
                        backward_block(src, out, &b, &mut vec![0.0; w], None);
                    } else {
                        let (mut vp, mut row) = (vec![0.0; row_buf_len(&b)], vec![0.0; w]);
                        for_each_output_row(src, &b, &mut vp, &mut row, |o, r| {
                            out[o * w..(o + 1) * w].copy_from_slice(r)
                        });
                    }
                }
                let same = flat.iter().zip(&rows).all(|(a, b)| a.to_bits() == b.to_bits() || (*a == 0.0 && *b == 0.0));
                assert!(same, "h {h} w {w} k {k} d {d} transpose {transpose}");
            }
        }
    }

    #[test]
    fn other_grids_decline() {
        let g = ConvGeometry { stride: [2, 2], padding: [1, 1], dilation: [1, 1], groups: 1 };
        assert!(PlaneBox::new(&Blocks::new(&[1, 2, 8, 8], super::super::Order::Nchw, 3, 3, &g), false).is_none());
        let g = ConvGeometry { stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 1 };
        assert!(PlaneBox::new(&Blocks::new(&[1, 2, 8, 8], super::super::Order::Nchw, 3, 3, &g), false).is_none());
        let g = ConvGeometry { stride: [1, 1], padding: [1, 1], dilation: [1, 1], groups: 1 };
        assert!(PlaneBox::new(&Blocks::new(&[1, 2, 8, 8], super::super::Order::Nhwc, 3, 3, &g), false).is_none());
    }
}
