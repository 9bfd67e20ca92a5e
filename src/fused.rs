//! Fused single-pass CPU kernels for the elementwise "collision" work of the IC layer.
//!
//! Forward, per element (c = channel):
//! ```text
//! r = relu(y - p + shift[c]);  out = y + alpha * r
//! ```
//! written in place into the two temporaries the conv calls produced (`y` becomes `out`, `p`
//! becomes `relu_z`), so the forward allocates nothing beyond the two convolutions.
//!
//! Backward, one pass over `grad` and `relu_z` gives `gz = alpha * grad * [r > 0]`, `gy = grad + gz`
//! and the reductions d alpha = sum(grad * r), db1[c] = sum gz, db2[c] = sum grad. Partial sums are
//! combined in a fixed order (f64 accumulators), so the result is deterministic for any thread count.
//!
//! The kernels run on CPU float32/float64 tensors that are dense in NCHW (contiguous) or NHWC
//! (channels_last) order; every other case returns `Ok(None)` and the caller uses libtorch ops.
//! NaN behaves as in `torch.relu` / `threshold_backward`: relu(NaN) = NaN, and NaN is not masked.
use crate::error::Result;
use crate::ic_conv::{CollisionGrads, NeedsGrad};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

/// Elements per parallel task (keeps tiny planes from becoming one task each).
const GRAIN: usize = 1 << 14;

/// Memory order of a dense 4-D tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Contiguous (N, C, H, W): `hw` elements per channel plane.
    Nchw { c: usize, hw: usize },
    /// channels_last (N, H, W, C) in memory.
    Nhwc { c: usize },
}

/// The layout of `t` if it is a dense 4-D NCHW or NHWC tensor.
pub fn layout_of(t: &Tensor) -> Option<Layout> {
    if t.dim() != 4 {
        return None;
    }
    let s = t.size();
    let (c, h, w) = (s[1], s[2], s[3]);
    if t.is_contiguous() {
        return Some(Layout::Nchw { c: c as usize, hw: (h * w) as usize });
    }
    let st = t.stride();
    let want = [h * w * c, 1, w * c, c];
    let ok = (0..4).all(|i| s[i] == 1 || st[i] == want[i]);
    if ok {
        Some(Layout::Nhwc { c: c as usize })
    } else {
        None
    }
}

pub trait Elem: Copy + Send + Sync + PartialOrd + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> + std::ops::Mul<Output = Self> {
    const ZERO: Self;
    const KIND: Kind;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl Elem for f32 {
    const ZERO: Self = 0.0;
    const KIND: Kind = Kind::Float;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Elem for f64 {
    const ZERO: Self = 0.0;
    const KIND: Kind = Kind::Double;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
}

#[inline(always)]
fn relu<T: Elem>(v: T) -> T {
    // `v < 0 ? 0 : v` keeps NaN, like torch.relu.
    if v < T::ZERO {
        T::ZERO
    } else {
        v
    }
}

/// # Safety
/// `t` must be a dense CPU tensor of element type `T` that nothing else reads or writes meanwhile.
unsafe fn slice_mut<T: Elem>(t: &Tensor) -> &mut [T] {
    std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, t.numel())
}

/// # Safety
/// `t` must be a dense CPU tensor of element type `T`.
unsafe fn slice<T: Elem>(t: &Tensor) -> &[T] {
    std::slice::from_raw_parts(t.data_ptr() as *const T, t.numel())
}

fn scalar(alpha: &Tensor) -> Result<f64> {
    Ok(alpha.f_reshape([-1])?.f_double_value(&[0])?)
}

/// Common eligibility: CPU, f32/f64, same dense layout for every tensor.
fn eligible(ts: &[&Tensor]) -> Option<(Kind, Layout)> {
    let first = ts[0];
    let kind = first.kind();
    if first.device() != Device::Cpu || !matches!(kind, Kind::Float | Kind::Double) {
        return None;
    }
    let lay = layout_of(first)?;
    let st = first.stride();
    for t in &ts[1..] {
        if t.device() != Device::Cpu || t.kind() != kind || t.size() != first.size() || t.stride() != st {
            return None;
        }
    }
    Some((kind, lay))
}

/// Fused forward. Consumes the temporaries `y` (N, C, Ho, Wo) and `p` (same shape) and returns
/// `(out, relu_z)` in their buffers, or `None` when the fused path does not apply.
pub fn collision_forward(y: &Tensor, p: &Tensor, shift: &Tensor, alpha: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
    let Some((kind, lay)) = eligible(&[y, p]) else { return Ok(None) };
    if y.numel() == 0 {
        return Ok(None);
    }
    let a = scalar(alpha)?;
    let shift = shift.f_to_device(Device::Cpu)?.f_to_kind(kind)?.f_contiguous()?;
    // SAFETY: y and p are fresh outputs of the two conv calls, dense (checked), owned by the caller
    // who hands them over; shift is a contiguous copy we hold.
    unsafe {
        match kind {
            Kind::Float => fwd::<f32>(slice_mut(y), slice_mut(p), slice(&shift), f32::from_f64(a), lay),
            _ => fwd::<f64>(slice_mut(y), slice_mut(p), slice(&shift), a, lay),
        }
    }
    Ok(Some((y.shallow_clone(), p.shallow_clone())))
}

fn fwd<T: Elem>(y: &mut [T], p: &mut [T], shift: &[T], alpha: T, lay: Layout) {
    let kernel = |yv: &mut T, pv: &mut T, s: T| {
        let r = relu(*yv - *pv + s);
        *pv = r;
        *yv = *yv + alpha * r;
    };
    match lay {
        Layout::Nchw { c, hw } => {
            let min = (GRAIN / hw.max(1)).max(1);
            y.par_chunks_mut(hw).zip(p.par_chunks_mut(hw)).enumerate().with_min_len(min).for_each(|(plane, (yc, pc))| {
                let s = shift[plane % c];
                for (yv, pv) in yc.iter_mut().zip(pc.iter_mut()) {
                    kernel(yv, pv, s);
                }
            })
        }
        Layout::Nhwc { c } => {
            let min = (GRAIN / c.max(1)).max(1);
            y.par_chunks_mut(c).zip(p.par_chunks_mut(c)).with_min_len(min).for_each(|(yc, pc)| {
                for ((yv, pv), &s) in yc.iter_mut().zip(pc.iter_mut()).zip(shift) {
                    kernel(yv, pv, s);
                }
            })
        }
    }
}

/// Fused backward of the collision term; `None` when the fused path does not apply.
pub fn collision_backward(
    grad: &Tensor,
    relu_z: &Tensor,
    alpha: &Tensor,
    need_gy: bool,
    needs: &NeedsGrad,
) -> Result<Option<CollisionGrads>> {
    let Some((kind, lay)) = eligible(&[grad, relu_z]) else { return Ok(None) };
    if grad.numel() == 0 {
        return Ok(None);
    }
    let a = scalar(alpha)?;
    let gz = relu_z.f_empty_like()?;
    let gy = relu_z.f_empty_like()?;
    let c = grad.size()[1] as usize;
    // SAFETY: grad and relu_z are dense (checked) and only read; gz and gy are fresh allocations
    // with the same strides.
    let sums = unsafe {
        match kind {
            Kind::Float => bwd::<f32>(slice(grad), slice(relu_z), slice_mut(&gy), slice_mut(&gz), f32::from_f64(a), lay),
            _ => bwd::<f64>(slice(grad), slice(relu_z), slice_mut(&gy), slice_mut(&gz), a, lay),
        }
    };
    let vec_t = |v: &[f64]| -> Result<Tensor> { Ok(Tensor::from_slice(v).f_to_kind(kind)?) };
    debug_assert_eq!(sums.db1.len(), c);
    Ok(Some(CollisionGrads {
        gy: if need_gy { Some(gy) } else { None },
        gz,
        dalpha: if needs.alpha { Some(Tensor::from(sums.dalpha).f_to_kind(kind)?) } else { None },
        db1: if needs.adjust_bias { Some(vec_t(&sums.db1)?) } else { None },
        db2: if needs.bias { Some(vec_t(&sums.db2)?) } else { None },
    }))
}

struct Sums {
    dalpha: f64,
    db1: Vec<f64>,
    db2: Vec<f64>,
}

fn bwd<T: Elem>(g: &[T], r: &[T], gy: &mut [T], gz: &mut [T], alpha: T, lay: Layout) -> Sums {
    #[inline(always)]
    fn kernel<T: Elem>(g: T, r: T, alpha: T, gy: &mut T, gz: &mut T) -> (T, T) {
        // threshold_backward semantics: zero where r <= 0 (NaN passes).
        let z = if r <= T::ZERO { T::ZERO } else { alpha * g };
        *gz = z;
        *gy = g + z;
        (z, g * r)
    }
    match lay {
        Layout::Nchw { c, hw } => {
            let min = (GRAIN / hw.max(1)).max(1);
            let parts: Vec<(f64, f64, f64)> = g
                .par_chunks(hw)
                .zip(r.par_chunks(hw))
                .zip(gy.par_chunks_mut(hw).zip(gz.par_chunks_mut(hw)))
                .with_min_len(min)
                .map(|((gc, rc), (gyc, gzc))| {
                    let (mut s1, mut s2, mut sa) = (0.0f64, 0.0f64, 0.0f64);
                    for i in 0..gc.len() {
                        let (z, gr) = kernel(gc[i], rc[i], alpha, &mut gyc[i], &mut gzc[i]);
                        s1 += z.to_f64();
                        s2 += gc[i].to_f64();
                        sa += gr.to_f64();
                    }
                    (s1, s2, sa)
                })
                .collect();
            let mut out = Sums { dalpha: 0.0, db1: vec![0.0; c], db2: vec![0.0; c] };
            for (plane, (s1, s2, sa)) in parts.into_iter().enumerate() {
                out.db1[plane % c] += s1;
                out.db2[plane % c] += s2;
                out.dalpha += sa;
            }
            out
        }
        Layout::Nhwc { c } => {
            let rows = (GRAIN / c.max(1)).max(1);
            let chunk = rows * c;
            let parts: Vec<Sums> = g
                .par_chunks(chunk)
                .zip(r.par_chunks(chunk))
                .zip(gy.par_chunks_mut(chunk).zip(gz.par_chunks_mut(chunk)))
                .map(|((gc, rc), (gyc, gzc))| {
                    let mut s = Sums { dalpha: 0.0, db1: vec![0.0; c], db2: vec![0.0; c] };
                    for (i, (&gv, &rv)) in gc.iter().zip(rc).enumerate() {
                        let (z, gr) = kernel(gv, rv, alpha, &mut gyc[i], &mut gzc[i]);
                        let ch = i % c;
                        s.db1[ch] += z.to_f64();
                        s.db2[ch] += gv.to_f64();
                        s.dalpha += gr.to_f64();
                    }
                    s
                })
                .collect();
            let mut out = Sums { dalpha: 0.0, db1: vec![0.0; c], db2: vec![0.0; c] };
            for s in parts {
                out.dalpha += s.dalpha;
                for ch in 0..c {
                    out.db1[ch] += s.db1[ch];
                    out.db2[ch] += s.db2[ch];
                }
            }
            out
        }
    }
}
